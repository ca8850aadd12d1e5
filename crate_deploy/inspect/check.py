"""`crate-deploy check [DIRECTORY]`: pre-flight against the real application.

The cheap findings come from preflight.py; this adds what only the application can say,
asked of the target venv's own interpreter in a subprocess (app_report.py), so that
crate-deploy never imports the application or its Celery: does the app import, which
Celery/kombu/Flower it has, and for every registered task the queue the application's
*own* configuration sends it to against the queue the site sends it to. A task whose
queue no pool consumes would wait there forever: that is an error, with the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from crate_deploy.errors import CrateDeployError
from crate_deploy.inspect.preflight import Finding, preflight
from crate_deploy.plan.names import DEPLOYMENT_FILE, env_file_name
from crate_deploy.site.load import Loc, format_loc, load_site
from crate_deploy.site.model import Site
from crate_deploy.state.app_queues import remember_app_queues
from crate_deploy.state.deployment import (
    Deployment,
    load_deployment,
    masker_for,
    read_secrets,
    recorded_site_path,
)
from crate_deploy.systemd.units import UnitError, parse_environment_file

REPORT_SCRIPT = Path(__file__).with_name("app_report.py")
INHERITED = ("PATH", "LANG", "LC_ALL", "HOME", "TZ")


def check_command(directory: Path, *, timeout: float = 120.0, foreground: bool = False) -> int:
    deployment = load_deployment(directory)
    try:
        secrets = read_secrets(deployment.site)
    except CrateDeployError:
        secrets = {}  # preflight says why, by name
    mask = masker_for(secrets)
    findings = [*preflight(deployment, sandboxed=not foreground),
                *app_findings(deployment, secrets, timeout)]
    for finding in findings:
        click.echo(mask(finding.line()))
    errors = sum(finding.severity == "error" for finding in findings)
    warnings = sum(finding.severity == "warning" for finding in findings)
    click.echo(f"{deployment.site.project}: {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


def app_findings(deployment: Deployment, secrets: dict[str, str],
                 timeout: float) -> list[Finding]:
    site = deployment.site
    python = Path(site.celery_executable).parent / "python"
    if not python.exists():
        return [Finding("error", "app", f"{python} is not on this machine: run check where the "
                        "application's venv is")]
    report = run_report(deployment, python, secrets, timeout)
    if not report.get("ok"):
        return [Finding("error", "app", f"{site.app} does not import:\n    " + "\n    ".join(
            str(report.get("error", "?")).splitlines()))]
    locate = _locator(deployment)
    remember_app_queues(deployment, {task["app_queue"] for task in report["tasks"]})
    return [*_version_findings(deployment, report["versions"]),
            Finding("ok", "app", f"{site.app} imports ({len(report['tasks'])} task(s))"),
            *_namespace_findings(site, report.get("namespace")),
            *task_findings(site, report["tasks"], locate),
            *_route_findings(report["unmatched_routes"], locate),
            *_beat_findings(site, {task["name"] for task in report["tasks"]}, locate)]


def run_report(deployment: Deployment, python: Path, secrets: dict[str, str],
               timeout: float) -> dict[str, Any]:
    """Load the app in the target's interpreter, with the services' environment."""
    site = deployment.site
    request = {"app": site.app, "site": {"routes": {pattern: {"queue": queue} for pattern, queue
                                                    in site.routes.items()},
                                         "default_queue": site.main_queue}}
    cwd = site.working_directory if site.working_directory and Path(
        site.working_directory).is_dir() else str(deployment.directory)
    try:
        # -c, not the file's path: that would put crate-deploy's own inspect/ first on the
        # app's sys.path, where its probe.py or status.py could shadow the app's modules.
        result = subprocess.run([str(python), "-c", REPORT_SCRIPT.read_text("utf-8"),
                                 json.dumps(request)],
                                capture_output=True, text=True, timeout=timeout, check=False,
                                cwd=cwd, env=service_environment(deployment, secrets))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"importing it took longer than {timeout:g}s"}
    lines = result.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = "\n".join(result.stderr.strip().splitlines()[-6:])
        return {"ok": False, "error": tail or f"the report script exited {result.returncode}"}
    return report if isinstance(report, dict) else {"ok": False, "error": "no report"}


def service_environment(deployment: Deployment, secrets: dict[str, str]) -> dict[str, str]:
    """What a service's process sees: the rendered env file (its PYTHONPATH pointing at
    this directory, which holds the same files as config_dir) and the secrets."""
    env = {key: os.environ[key] for key in INHERITED if key in os.environ}
    path = deployment.directory / env_file_name(deployment.site)
    try:
        rendered = parse_environment_file(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnitError):
        rendered = {}
    python_path = rendered.get("PYTHONPATH", "").split(":")
    rendered["PYTHONPATH"] = ":".join(
        str(deployment.directory) if part == deployment.config_dir else part
        for part in python_path if part)
    return {**env, **rendered, **secrets}


def task_findings(site: Site, tasks: list[dict[str, str]], locate: Any) -> Iterator[Finding]:
    consumed = {queue: index for index, worker in reversed(list(enumerate(site.workers)))
                for queue in worker.queues}
    good = 0
    for task in tasks:
        name, own, wanted = task["name"], task["app_queue"], task["site_queue"]
        pools = locate(("workers", 0, "queues"))
        if own not in consumed:
            fix = _fix(site, name, own, wanted, consumed, locate)
            yield Finding("error", "task", f"{name} goes to queue {own!r} (the application's own "
                          f"configuration), which no pool consumes: {fix}")
        elif wanted not in consumed:
            yield Finding("error", "task", f"the site routes {name} to queue {wanted!r}, which no "
                          f"pool consumes: add it to a pool's queues ({pools})")
        elif own != wanted:
            yield Finding("warning", "task", f"{name} goes to {own!r} (the application's own "
                          f"configuration), the site routes it to {wanted!r}: wire "
                          "crate_deploy_producer into the application (docs/producers.md)")
        else:
            good += 1
            yield Finding("ok", "task", f"{name} -> {own} (the application and the site agree)")
    if good:
        yield Finding("ok", "task", f"{good} task(s) go to queues a pool consumes")


def _fix(site: Site, name: str, own: str, wanted: str, consumed: dict[str, int],
         locate: Any) -> str:
    pools = locate(("workers", 0, "queues"))
    if wanted in consumed and wanted != own:
        return (f"the site sends it to {wanted!r}; the application's task senders do not use the "
                f"site's routing: wire crate_deploy_producer into them (docs/producers.md, "
                f"app_settings.style: {site.app_settings.style}), then {_move_stranded(site, own)}"
                f"; or consume {own!r} as it is: declare it under queues and add it to a pool's "
                f"queues ({pools})")
    if own in site.queue_names:
        return f"add {own!r} to a pool's queues ({pools})"
    return (f"add `{name}: {site.main_queue}` under routes ({locate(('routes',))}), or declare "
            f"queue {own!r} and add it to a pool's queues")


def _move_stranded(site: Site, queue: str) -> str:
    if site.broker.is_rabbitmq:
        return f"move what is stranded with `crate-deploy requeue --stranded {queue}`"
    # requeue moves messages with RabbitMQ's own protocol; Redis has no such move.
    return f"send again what is stranded in {queue!r} (requeue works with RabbitMQ only)"


def _version_findings(deployment: Deployment, versions: dict[str, str | None]
                      ) -> Iterator[Finding]:
    found = ", ".join(f"{name} {version}" for name, version in versions.items() if version)
    yield Finding("ok", "versions", found or "no Celery in the venv")
    rendered = _rendered_versions(deployment)
    for name in ("celery", "flower"):
        have, assumed = versions.get(name), rendered.get(name)
        if have and assumed and have != assumed:
            yield Finding("warning", "versions", f"rendered for {name} {assumed}, but the venv "
                          f"has {have}: render again (or correct {name}_version)")


def _namespace_findings(site: Site, namespace: str | None) -> Iterator[Finding]:
    style = site.app_settings.style
    if namespace == "CELERY" and style != "celery-namespace":
        yield Finding("warning", "app", f"the app reads settings with namespace=\"CELERY\", but "
                      f"app_settings.style is {style}: set it to celery-namespace")
    elif namespace is None and style == "celery-namespace":
        yield Finding("warning", "app", "the app reads settings without a namespace, but "
                      "app_settings.style is celery-namespace: use lowercase or old-uppercase")


def _route_findings(unmatched: list[str], locate: Any) -> Iterator[Finding]:
    for pattern in unmatched:
        yield Finding("warning", "route", f"{pattern} matches no registered task "
                      f"({locate(('routes', pattern))})")


def _beat_findings(site: Site, registered: set[str], locate: Any) -> Iterator[Finding]:
    if not site.beat.enabled:
        return
    for index, entry in enumerate(site.beat.schedule):
        if entry.task not in registered:
            where = locate(("beat", "schedule", index, "task"))
            yield Finding("error", "beat", f"{entry.name} runs {entry.task}, which the "
                          f"application does not register ({where})")


def _locator(deployment: Deployment) -> Any:
    """FILE:LINE:COL of a key in the site file the directory was rendered from."""
    recorded = recorded_site_path(deployment.directory)
    source = str(recorded) if recorded else _document(deployment).get("source")
    loaded = None
    if isinstance(source, str) and Path(source).is_file():
        try:
            loaded = load_site(Path(source))
        except CrateDeployError:
            loaded = None

    def locate(loc: Loc) -> str:
        if loaded is None:
            return format_loc(loc)
        mark = loaded.locate(loc)
        return f"{source}:{mark.line}:{mark.column}: {format_loc(loc)}"

    return locate


def _rendered_versions(deployment: Deployment) -> dict[str, str]:
    versions = _document(deployment).get("versions") or {}
    return {key: value for key, value in versions.items() if isinstance(value, str)}


def _document(deployment: Deployment) -> dict[str, Any]:
    try:
        document = json.loads((deployment.directory / DEPLOYMENT_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}
