"""`crate-deploy drift [DIR]`: does the server run what the site file says? For cron and
monitoring: names every file that differs, exit 1 when anything does.

Three layers can drift apart, and each is compared with the one before it:

1. the site file and the render directory: the site changed and was not rendered
   (or someone edited a rendered file by hand);
2. the render directory and what `launch --systemd` installed: a render was not
   launched, or an installed unit or config file was edited by hand;
3. the config the services were started with: rendered into config_dir in place,
   but the services were not restarted.

It reads and renders in memory only; nothing is written, nothing is started.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from crate_deploy.commands.render import render_in_memory
from crate_deploy.commands.review import service_lines
from crate_deploy.errors import UsageError
from crate_deploy.plan.names import DEPLOYMENT_FILE
from crate_deploy.plan.restarts import ServiceChanges
from crate_deploy.run.install import (
    INSTALL_MANIFEST,
    install_files,
    services_to_restart,
    unit_dir,
)
from crate_deploy.state.deployment import Deployment, load_deployment, recorded_site_path
from crate_deploy.write import (
    FileChange,
    InstallRecord,
    plan_changes,
    plan_install,
    read_install_record,
    rendered_digests,
    rooted,
)


@dataclass(frozen=True)
class Finding:
    path: str
    kind: str
    message: str


@dataclass
class DriftReport:
    findings: list[Finding]
    services: ServiceChanges | None  # None: nothing installed with launch --systemd
    notes: list[str]


def drift_command(directory: Path, *, site_path: Path | None, root: Path | None,
                  as_json: bool) -> int:
    report = find_drift(directory, site_path=site_path, root=root)
    if as_json:
        click.echo(json.dumps({
            "drift": bool(report.findings),
            "findings": [asdict(finding) for finding in report.findings],
            "services": report.services.as_dict() if report.services else None,
            "notes": report.notes}, indent=2))
        return 1 if report.findings else 0
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for finding in report.findings:
        click.echo(f"drift: {finding.path}: {finding.message}")
    if not report.findings:
        click.echo(f"no drift: {directory} is what the site file renders, and is what is "
                   "installed")
        return 0
    services = report.services
    if services is not None and (services.restart or services.start or services.stop):
        click.echo(f"`crate-deploy launch --systemd` from {directory} would:")
        for line in service_lines(services):
            click.echo(f"  {line}")
    click.echo(f"{len(report.findings)} file(s) drifted")
    return 1


def find_drift(directory: Path, *, site_path: Path | None, root: Path | None) -> DriftReport:
    deployment = load_deployment(directory)
    source = _recorded_source(directory)
    site_path = site_path or recorded_site_path(directory) or Path(source)
    if not site_path.is_file():
        raise UsageError(f"the site file {site_path} (as the last render named it) is not "
                         "there: give its path with --site")
    findings = _render_drift(deployment, site_path, source)
    prefix = _checked_root(root, deployment)
    record = read_install_record(prefix, f"{deployment.config_dir}/{INSTALL_MANIFEST}")
    if not record.files:
        note = (f"nothing was installed from {directory} with `launch --systemd`"
                f"{f' into {prefix}' if root else ''}: only the render was checked")
        return DriftReport(findings, None, [note])
    installed, services = _install_drift(deployment, prefix, record)
    return DriftReport(findings + installed + _drop_ins(deployment, prefix), services, [])


def _render_drift(deployment: Deployment, site_path: Path, source: str) -> list[Finding]:
    """The site file rendered now, against the render directory."""
    directory = deployment.directory
    rendering = render_in_memory(site_path, directory, source)[2]
    written = rendered_digests(directory)
    findings = []
    for change in plan_changes(directory, rendering.files):
        if change.status == "unchanged":
            continue
        path = str(directory / change.path)
        if change.old is not None and written.get(change.path) != _sha256(change.old):
            findings.append(Finding(path, "edited", "edited by hand since crate-deploy "
                                    "rendered it; `crate-deploy render` puts it back"))
        else:
            what = {"created": "is missing", "removed": "is no longer rendered",
                    "changed": "differs"}[change.status]
            findings.append(Finding(path, "not-rendered", f"{what}: the site file changed "
                                    f"since the last render; `crate-deploy render {site_path} "
                                    f"-o {directory}`"))
    return findings


def _install_drift(deployment: Deployment, prefix: Path,
                   record: InstallRecord) -> tuple[list[Finding], ServiceChanges]:
    """What launch --systemd installed, against what it would install from DIR now."""
    findings = []
    edited = set()
    for path, digest in record.files.items():
        installed = rooted(prefix, path)
        found = _digest(installed)
        if found is None:
            findings.append(Finding(str(installed), "missing", "installed by `launch "
                                    "--systemd`, and since removed (or unreadable)"))
            edited.add(path)
        elif found != digest:
            findings.append(Finding(str(installed), "edited", "edited by hand since `launch "
                                    "--systemd` installed it; launch again to put it back"))
            edited.add(path)
    files, config = install_files(deployment, prefix)
    places = (unit_dir(deployment.site.systemd.scope == "user"), deployment.config_dir)
    changes = plan_install(prefix, record, files, places)
    for change in changes:
        if change.status != "unchanged" and change.path not in edited:
            findings.append(_not_installed(prefix, change))
    for name in sorted(name for name, digest in config.items()
                       if record.config.get(name, digest) != digest):
        path = f"{deployment.config_dir}/{name}"
        if not any(change.path == path for change in changes):  # reported above if copied
            findings.append(Finding(str(rooted(prefix, path)), "not-restarted",
                                    "rendered since the services were started; `launch "
                                    "--systemd` restarts them"))
    return findings, services_to_restart(deployment, changes, record.config, config)


def _drop_ins(deployment: Deployment, prefix: Path) -> list[Finding]:
    """Drop-ins (`systemctl edit UNIT`) change a unit without touching its file: the
    most common hand edit, and as much drift as an edited unit."""
    user = deployment.site.systemd.scope == "user"
    places = [unit_dir(user), *([] if user else ["/run/systemd/system"])]
    changed: dict[Path, list[str]] = {}
    for unit in deployment.units:
        for folder in (rooted(prefix, f"{place}/{name}") for place in places
                       for name in _drop_in_folders(unit)):
            for conf in sorted(folder.glob("*.conf")) if folder.is_dir() else []:
                changed.setdefault(conf, []).append(unit)
    return [Finding(str(conf), "drop-in", f"a drop-in changes {' '.join(units)}, and the "
                    "site file does not say so: move the change into the site file, or "
                    f"remove it (`systemctl revert {units[0]}`)")
            for conf, units in changed.items()]


def _drop_in_folders(unit: str) -> list[str]:
    """systemd.unit(5): UNIT.d, and for a dashed name each prefix (crate-.service.d)."""
    stem, _, kind = unit.rpartition(".")
    parts = stem.split("-")
    prefixes = ["-".join(parts[:count]) + "-" for count in range(1, len(parts))]
    return [f"{unit}.d", *(f"{prefix}.{kind}.d" for prefix in prefixes)]


def _not_installed(prefix: Path, change: FileChange) -> Finding:
    what = {"created": "is not installed yet", "removed": "is installed but no longer "
            "rendered", "changed": "differs from the render"}[change.status]
    return Finding(str(rooted(prefix, change.path)), "not-installed",
                   f"{what}; `launch --systemd` installs the render")


def _recorded_source(directory: Path) -> str:
    """The site file the last render was made from, as it was named then."""
    try:
        document = json.loads((directory / DEPLOYMENT_FILE).read_text(encoding="utf-8"))
        return str(document["source"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{directory / DEPLOYMENT_FILE} is unreadable: render again") from None


def _checked_root(root: Path | None, deployment: Deployment) -> Path:
    if root is None:
        return Path("/")
    if deployment.site.systemd.scope == "user":
        raise UsageError("--root goes with system units only (systemd.scope: system)")
    if not root.is_dir():
        raise UsageError(f"--root {root}: no such directory")
    return root.resolve()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _digest(path: Path) -> str | None:
    """The sha256 of a file's bytes (as install manifests record them); None if unreadable."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
