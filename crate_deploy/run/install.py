"""`crate-deploy launch --systemd`: install a rendered site into systemd, enable and start it.

The rendered units go into the system unit directory (or the user's, with --user), the
config files into the site's config_dir when that is not the render directory itself,
all reported like Ansible (created / changed / unchanged / removed) by write.py, which
also refuses to overwrite a file crate-deploy did not install. Then, like an Ansible
handler, only the services whose own files changed are restarted.

With --root the tree below ROOT is an image: systemctl enables the units offline and
nothing is started (what would be restarted is printed). Without --root the host's
systemd manager does the rest; when there is none (a container whose PID 1 is not
systemd) the files are still installed and enabled -- what a Dockerfile step wants --
and the start step says why it cannot run, with exit status 1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import click

from crate_deploy.commands import report
from crate_deploy.errors import LaunchError, UsageError
from crate_deploy.inspect.preflight import refuse_unless_clear
from crate_deploy.plan import names
from crate_deploy.plan.restarts import ServiceChanges, plan_restarts
from crate_deploy.render import RenderedFile
from crate_deploy.run.host import check_this_host
from crate_deploy.run.unit_watch import UnitWatch, active_units, wait_for_units
from crate_deploy.state.deployment import (
    Deployment,
    check_flower_passwords,
    load_deployment,
    read_secrets,
)
from crate_deploy.write import (
    FileChange,
    apply_install,
    ensure_directory,
    plan_install,
    read_install_record,
)

INSTALL_MANIFEST = ".crate-deploy-installed.json"
SYSTEM_UNIT_DIR = "/etc/systemd/system"
# sd_booted(3): this directory exists only when systemd is PID 1.
BOOTED_MARKER = Path("/run/systemd/system")
SYSTEMCTL_TIMEOUT = 300.0


def install_command(directory: Path, *, user: bool, root: Path | None,
                    start: bool = True, wait: bool = True, timeout: float = 60.0) -> int:
    """Install DIR's units (and config) into systemd, enable them, start or restart them."""
    deployment = _checked_scope(load_deployment(directory), user)
    root = _checked_root(root, user)
    if root is None:  # an offline install (--root) may be building another host's image
        check_this_host(deployment)
    systemctl = _Systemctl(user=user, root=root)
    # Asked before installing, so removed units are stopped as well as disabled.
    problem = None if root else manager_problem(user)
    live = root is None and problem is None
    if live:  # the paths are this machine's: check them before anything changes
        refuse_unless_clear(deployment, sandboxed=True)
    if live and start:  # before anything starts: an empty password lets anyone into Flower
        check_flower_passwords(deployment.site, read_secrets(deployment.site))
    prefix = root or Path("/")
    if user:
        _make_state_directory(deployment)
    changes, restart = _install(deployment, prefix, systemctl, live=live)
    try:
        systemctl.run("enable", *deployment.units)
    except LaunchError:
        if problem is None:
            raise
        # On a systemd host, `systemctl --user enable` needs the user's manager too:
        # say why it is missing rather than systemctl's "Failed to connect to bus".
        click.echo(f"crate-deploy: the units are installed in {_installed_units(deployment)} "
                   f"but not enabled: {problem}", err=True)
        return 1
    click.echo(f"enabled: {' '.join(deployment.units)}")
    changed = sum(change.status != "unchanged" for change in changes)
    summary = (f"{changed} file(s) changed, {len(changes) - changed} unchanged; "
               f"{len(deployment.units)} unit(s) enabled in "
               f"{_show(prefix, _installed_units(deployment))}")
    if not live or not start:
        return _not_started(deployment, restart, summary, root=root,
                            problem=problem if start else None)
    # Each run starts afresh: a unit systemd gave up on keeps its failed state and its
    # start counter, which reset-failed flushes (systemd.unit(5), StartLimitIntervalSec=).
    systemctl.run("reset-failed", *deployment.services)
    running = active_units(deployment.services, user=systemctl.user)
    if restart:
        systemctl.run("try-restart", *restart)
    click.echo(f"restarted: {' '.join(restart) or '(nothing)'}")
    # Exits from here on count (not the old processes try-restart has just stopped).
    ours = [unit for unit in deployment.services if unit not in running or unit in restart]
    watch = UnitWatch.starting_now(deployment.services, user=systemctl.user, ours=ours,
                                   stop=lambda units: systemctl.run("stop", *units))
    systemctl.run("start", deployment.target)
    click.echo(f"{summary}; {deployment.target} started")
    return wait_for_units(deployment, watch, timeout=timeout) if wait else 0


def _install(deployment: Deployment, prefix: Path, systemctl: _Systemctl, *,
             live: bool) -> tuple[list[FileChange], list[str]]:
    """Put the files in place (reported); return the changes and the services to restart."""
    manifest = f"{deployment.config_dir}/{INSTALL_MANIFEST}"
    record = read_install_record(prefix, manifest)
    files, config = install_files(deployment, prefix)
    places = (_installed_units(deployment), deployment.config_dir)
    changes = plan_install(prefix, record, files, places)
    _report(prefix, changes)
    removed = [Path(change.path).name for change in changes if change.status == "removed"
               and change.path.startswith(f"{_installed_units(deployment)}/")]
    if removed:  # while their files are still there to say what to disable
        systemctl.run("disable", *(["--now"] if live else []), *removed)
    apply_install(prefix, manifest, changes, config)
    if live and any(change.status != "unchanged" for change in changes):
        systemctl.run("daemon-reload")
    return changes, services_to_restart(deployment, changes, record.config, config).restart


def _make_state_directory(deployment: Deployment) -> None:
    """A user unit has no StateDirectory= (that would be under ~/.local/state, not the
    state_dir the site names) and nothing makes the directory for it, so Flower and beat
    would fail at their first write: make it, as a foreground launch does (0700, the
    launching user's, who is the one the units run as)."""
    try:
        ensure_directory(Path(deployment.state_dir), mode=0o700)
    except OSError as exc:
        raise LaunchError(f"cannot create the state directory {deployment.state_dir}: "
                          f"{exc.strerror or exc}") from None


def _checked_scope(deployment: Deployment, user: bool) -> Deployment:
    """The site must have been rendered for the manager we install into."""
    scope = deployment.site.systemd.scope
    if user != (scope == "user"):
        how = "add --user" if scope == "user" else "run it without --user"
        raise UsageError(f"{deployment.directory} was rendered for the {scope} manager "
                         f"(systemd.scope: {scope}): {how}")
    if not deployment.config_dir.startswith("/"):
        raise LaunchError(f"config_dir {deployment.config_dir!r} is not absolute; render again")
    return deployment


def _installed_units(deployment: Deployment) -> str:
    return unit_dir(deployment.site.systemd.scope == "user")


def unit_dir(user: bool) -> str:
    """Where systemctl looks for the units we install (systemd.unit(5), "unit load path")."""
    if not user:
        return SYSTEM_UNIT_DIR
    # systemctl itself honours XDG_CONFIG_HOME (when absolute), so must we.
    config_home = os.environ.get("XDG_CONFIG_HOME", "")
    if not config_home.startswith("/"):
        config_home = str(Path.home() / ".config")
    return f"{config_home.rstrip('/')}/systemd/user"


def _checked_root(root: Path | None, user: bool) -> Path | None:
    if root is None:
        return None
    if user:
        # systemctl refuses --user with --root ("Invalid argument"): user units of an
        # image have no home to go to until someone logs in.
        raise UsageError("--user cannot be combined with --root: systemctl only enables "
                         "system units in another root")
    if not root.is_dir():
        raise UsageError(f"--root {root}: no such directory")
    return root.resolve()


def install_files(deployment: Deployment,
                  prefix: Path) -> tuple[list[RenderedFile], dict[str, str]]:
    """The files to install (absolute paths) and the hashes of the config the services read.

    The config files are copied only when config_dir (below the root) is not DIR itself;
    their hashes are kept either way, so the next launch knows what changed since.
    """
    directory = deployment.directory
    files = [_source(directory / names.UNIT_DIR / name, f"{_installed_units(deployment)}/{name}")
             for name in deployment.units]
    config_files = [_source(directory / name, f"{deployment.config_dir}/{name}")
                    for name in deployment.config_files]
    if (prefix / deployment.config_dir.lstrip("/")).resolve() != directory.resolve():
        files.extend(config_files)
    config = {Path(file.path).name: _sha256(file.content) for file in config_files
              if Path(file.path).name != names.DEPLOYMENT_FILE}
    return files, config


def _source(path: Path, destination: str) -> RenderedFile:
    try:
        content = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        raise LaunchError(f"{path} is missing: render again") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LaunchError(f"cannot read {path}: {exc}") from None
    return RenderedFile(destination, content, mode)


def services_to_restart(deployment: Deployment, changes: list[FileChange],
                        before: dict[str, str], after: dict[str, str]) -> ServiceChanges:
    """What the install does to each service (plan.restarts decides, as for render --check).

    Config counts as changed when its copy changed or its content differs from what
    the previous launch started the services with.
    """
    changed = {change.path for change in changes if change.status == "changed"}
    config = {name for name, digest in after.items() if before.get(name, digest) != digest}
    config |= {name for name in after if f"{deployment.config_dir}/{name}" in changed}
    unit_prefix = f"{_installed_units(deployment)}/"
    units = {change.path.removeprefix(unit_prefix): change.status for change in changes
             if change.path.startswith(unit_prefix)}
    return plan_restarts(deployment.site, units, config)


def manager_problem(user: bool) -> str | None:
    """Why no systemd manager can start units here, or None when one can."""
    if not BOOTED_MARKER.is_dir():
        return f"systemd is not running here (PID 1 is {_pid1()})"
    if not user:
        return None
    try:
        result = subprocess.run(["systemctl", "--user", "show", "--property=Version"],
                                capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no systemd user manager answers ({exc})"
    if result.returncode != 0:
        return _no_user_manager(result.stderr.strip() or "systemctl --user failed")
    return None


def _no_user_manager(said: str) -> str:
    """Why `systemctl --user` found no manager, and what to do: without XDG_RUNTIME_DIR
    (`runuser -u` does not set it) it cannot look, even where one runs."""
    name, runtime = _user_name(), f"/run/user/{os.getuid()}"
    start = f"log in, or `loginctl enable-linger {name}`"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return f"no systemd user manager answers for {name} ({said}); {start}"
    running = Path(runtime, "systemd", "private").is_socket()
    return (f"no systemd user manager answers for {name} ({said}): XDG_RUNTIME_DIR is not "
            f"set, and systemctl --user finds the manager through it; run with "
            f"XDG_RUNTIME_DIR={runtime}" + ("" if running else f" once one runs ({start})"))


def _not_started(deployment: Deployment, restart: list[str], summary: str, *,
                 root: Path | None, problem: str | None) -> int:
    """--root, --no-start, or no manager: say what would happen, and how to make it happen."""
    click.echo(f"would restart: {' '.join(restart) or '(nothing)'}")
    user = deployment.site.systemd.scope == "user"
    start = f"`systemctl{' --user' if user else ''} start {deployment.target}`"
    if root is not None:
        click.echo(f"{summary}; nothing started: {deployment.target} starts when {root} boots")
    elif problem is None:
        click.echo(f"{summary}; nothing started: start them with {start}")
    else:
        click.echo(f"crate-deploy: {problem}: installed and enabled {len(deployment.units)} "
                   f"units under {_installed_units(deployment)}; start them with {start} on a "
                   "systemd "
                   "host", err=True)
        return 1
    return 0


class _Systemctl:
    """systemctl for one scope and root; a failure is a LaunchError with its own words."""

    def __init__(self, *, user: bool, root: Path | None) -> None:
        self.user = user
        self.options = (["--user"] if user else []) + ([f"--root={root}"] if root else [])
        if shutil.which("systemctl") is None:
            raise LaunchError("systemctl is not installed here: launch --systemd needs "
                              "systemd (or run the fleet in the foreground with `launch`)")

    def run(self, command: str, *args: str) -> None:
        quiet = ["--quiet"] if command in ("enable", "disable") else []
        argv = ["systemctl", *self.options, *quiet, command, *args]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                    timeout=SYSTEMCTL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise LaunchError(f"`{' '.join(argv)}` did not finish within "
                              f"{SYSTEMCTL_TIMEOUT:.0f}s") from None
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
            raise LaunchError(f"`{' '.join(argv)}` failed: {said}")


def _report(prefix: Path, changes: list[FileChange]) -> None:
    colour = report.on_terminal()
    for change in changes:
        report.echo(report.file_line(change.status, _show(prefix, change.path), colour=colour))


def _show(prefix: Path, path: str) -> str:
    return str(prefix / path.lstrip("/"))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _pid1() -> str:
    try:
        return Path("/proc/1/comm").read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


def _user_name() -> str:
    return os.environ.get("USER") or str(os.getuid())
