"""`crate-deploy launch` (foreground) and `stop`: run the rendered units as systemd would.

The unit files are the one source of truth: each service runs with exactly the
command line, environment, environment files and working directory its unit holds.
launch waits until every pool answers a ping and consumes its queues and Flower
answers, then supervises until Ctrl-C / SIGTERM / `crate-deploy stop`, which stop
the fleet warmly (SIGTERM to each main process; running tasks finish).
"""

from __future__ import annotations

import os
import pwd
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crate_deploy.errors import LaunchError
from crate_deploy.inspect import probe
from crate_deploy.inspect.preflight import refuse_unless_clear
from crate_deploy.inspect.readiness import wait_until_ready
from crate_deploy.run.supervise import (
    LinePrinter,
    ProcessSpec,
    Supervisor,
    SupervisorResult,
    process_spec_from_service,
    stop_on_signals,
)
from crate_deploy.secrets import Masker
from crate_deploy.state.deployment import (
    Deployment,
    broker_urls,
    load_deployment,
    masker_for,
    read_secrets,
    secrets_file_warning,
)
from crate_deploy.state.launch import (
    clear_launch_state,
    launcher_pid,
    save_launch_state,
)
from crate_deploy.systemd.units import UnitError, load_service
from crate_deploy.write import ensure_directory

NAME = "crate-deploy"
# What systemd gives a service besides its unit's settings; the rest comes from the unit.
INHERITED = ("PATH", "LANG", "LC_ALL", "HOME", "USER", "LOGNAME", "TZ")


class MaskingSink:
    """A text stream that masks secrets in every write, one whole write at a time."""

    def __init__(self, sink: Any, mask: Masker) -> None:
        self._sink, self._mask, self._lock = sink, mask, threading.Lock()

    def write(self, text: str) -> object:
        with self._lock:
            return self._sink.write(self._mask(text))

    def flush(self) -> object:
        return self._sink.flush()

    def isatty(self) -> bool:
        return bool(getattr(self._sink, "isatty", lambda: False)())


@dataclass
class _Fleet:
    deployment: Deployment
    urls: list[str]
    secrets: dict[str, str]
    supervisor: Supervisor
    say: LinePrinter
    mask: Masker


def launch_command(directory: Path, *, timeout: float) -> int:
    deployment = load_deployment(directory)
    site = deployment.site
    secrets = read_secrets(site)
    mask = masker_for(secrets)
    sink = MaskingSink(sys.stdout, mask)
    running = launcher_pid(deployment)
    if running is not None:
        raise LaunchError(f"{directory} is already launched (pid {running}); "
                          f"`crate-deploy stop {directory}` stops it")
    urls = broker_urls(site, secrets)
    probe.check_broker(urls, mask)
    refuse_unless_clear(deployment, sandboxed=False)
    specs = _process_specs(deployment)
    ensure_directory(Path(deployment.state_dir), owner=_owner(specs))
    say = LinePrinter(sink, [spec.name for spec in specs] + [NAME])
    for warning in filter(None, [secrets_file_warning(site), _identity_warning(specs)]):
        say.line(NAME, f"warning: {warning}")
    # One printer for the services and for us: one name width, one lock.
    fleet = _Fleet(deployment, urls, secrets, Supervisor(
        specs, printer=say, on_start=lambda name, pid: _record(fleet)), say, mask)
    return _supervise(fleet, timeout)


def stop_command(directory: Path, *, timeout: float | None = None) -> int:
    """Ask a foreground launch (found through its state file) to stop, and wait for it."""
    deployment = load_deployment(directory)
    pid = launcher_pid(deployment)
    if pid is None:
        print(f"{NAME}: nothing launched from {directory} is running")
        return 0
    os.kill(pid, signal.SIGTERM)
    limit = timeout if timeout is not None else _longest_stop(deployment) + 30.0
    print(f"{NAME}: asked launch (pid {pid}) to stop; running tasks may take up to "
          f"{limit:g}s to finish")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if launcher_pid(deployment) is None:
            print(f"{NAME}: stopped")
            return 0
        time.sleep(0.2)
    raise LaunchError(f"launch (pid {pid}) did not stop within {limit:g}s")


def _process_specs(deployment: Deployment) -> list[ProcessSpec]:
    base = {key: os.environ[key] for key in INHERITED if key in os.environ}
    try:
        specs = [process_spec_from_service(load_service(deployment.unit_dir / name, base))
                 for name in deployment.services]
    except UnitError as exc:
        raise LaunchError(str(exc)) from None
    return [_as_unit_user(spec) for spec in specs]


def _as_unit_user(spec: ProcessSpec) -> ProcessSpec:
    """Run as root, switch to the unit's User= with that user's HOME/USER/LOGNAME, as
    systemd does; run as anyone else, run as them (a warning says so)."""
    if spec.user is None or os.geteuid() != 0:
        return spec
    try:
        account = pwd.getpwnam(spec.user)
    except KeyError:
        raise LaunchError(f"{spec.name}: User={spec.user} does not exist on this machine") from None
    env = {**spec.env, "HOME": account.pw_dir, "USER": spec.user, "LOGNAME": spec.user}
    return replace(spec, env=env)


def _owner(specs: list[ProcessSpec]) -> tuple[int, int] | None:
    """Who must own the state directory: the unit's user, when we switch to it."""
    user = next((spec.user for spec in specs if spec.user), None)
    if user is None or os.geteuid() != 0:
        return None
    account = pwd.getpwnam(user)
    return account.pw_uid, account.pw_gid


def _identity_warning(specs: list[ProcessSpec]) -> str | None:
    users = sorted({spec.user for spec in specs if spec.user})
    if not users or os.geteuid() == 0:
        return None
    me = pwd.getpwuid(os.geteuid()).pw_name
    if users == [me]:
        return None
    return (f"the units say User={', '.join(users)}; only root can switch, so this launch runs "
            f"them as {me}")


def _supervise(fleet: _Fleet, timeout: float) -> int:
    outcome: list[SupervisorResult] = []
    thread = threading.Thread(target=lambda: outcome.append(fleet.supervisor.run()),
                              name="supervisor", daemon=True)
    ready = False
    with stop_on_signals(fleet.supervisor):
        thread.start()
        try:
            ready = _wait_until_ready(fleet, thread, timeout)
        finally:
            # Not ready, or the wait failed: stop the fleet before leaving, or its
            # processes (each in a session of its own) would outlive us unsupervised.
            if not ready and thread.is_alive():
                fleet.supervisor.request_stop()
            try:
                while thread.is_alive():
                    thread.join(0.2)  # short joins keep signal handlers responsive
            finally:
                clear_launch_state(fleet.deployment)
    return _conclude(fleet, outcome[0] if outcome else None, ready)


def _wait_until_ready(fleet: _Fleet, thread: threading.Thread, timeout: float) -> bool:
    ready = wait_until_ready(fleet.deployment.site, fleet.urls, fleet.secrets, fleet.mask,
                             timeout=timeout, alive=thread.is_alive,
                             say=lambda text: fleet.say.line(NAME, text))
    if ready:
        fleet.say.line(NAME, "Ctrl-C (or `crate-deploy stop`) stops the fleet warmly: "
                       "running tasks finish")
    return ready


def _conclude(fleet: _Fleet, result: SupervisorResult | None, ready: bool) -> int:
    if result is None:
        raise LaunchError("the supervisor ended without a result")
    if result.crash_loop is not None:
        fleet.say.line(NAME, f"error: {result.crash_loop.describe()}")
        return 1
    if result.killed_after_timeout:
        fleet.say.line(NAME, "error: killed after the stop timeout (tasks may have been "
                       f"interrupted): {', '.join(result.killed_after_timeout)}")
        return 1
    if not ready:
        return 1
    fleet.say.line(NAME, "stopped" + ("" if result.clean else " (some exits were not clean: "
                                      f"{result.exit_statuses})"))
    return 0 if result.clean else 1


def _record(fleet: _Fleet) -> None:
    save_launch_state(fleet.deployment, fleet.supervisor.pids())


def _longest_stop(deployment: Deployment) -> float:
    from crate_deploy.site.checks import stop_timeout

    site = deployment.site
    return max([stop_timeout(site, worker) for worker in site.workers] + [60.0])
