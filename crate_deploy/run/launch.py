"""`crate-deploy launch` (foreground) and `stop`: run the rendered fleet as systemd would.

Each service runs from the process plan of the rendered site (deployment.json), the
same plan the units were rendered from: the command line, environment, environment
files and working directory its unit holds (tests/plan/test_services.py keeps them equal).
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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crate_deploy.errors import LaunchError
from crate_deploy.inspect import probe
from crate_deploy.inspect.preflight import refuse_unless_clear
from crate_deploy.inspect.readiness import wait_until_ready
from crate_deploy.plan.services import build_plan
from crate_deploy.run.control import (
    longest_stop,
    narrowed,
    resolve_services,
    restart_on_signal,
    stop_systemd,
)
from crate_deploy.run.failure import EarlyExits
from crate_deploy.run.guard import (
    hold_launch_lock,
    refuse_beside_orphans,
    stop_orphans,
    tagged,
)
from crate_deploy.run.host import check_this_host
from crate_deploy.run.logs import LoggingPrinter
from crate_deploy.run.outcome import report_failure, report_not_ready
from crate_deploy.run.specs import process_spec
from crate_deploy.run.supervise import (
    LinePrinter,
    ProcessSpec,
    Supervisor,
    SupervisorResult,
    stop_on_signals,
)
from crate_deploy.secrets import Masker
from crate_deploy.state.deployment import (
    Deployment,
    broker_urls,
    check_flower_passwords,
    load_deployment,
    masker_for,
    read_secrets,
    secrets_file_warning,
)
from crate_deploy.state.launch import (
    clear_launch_state,
    launcher_pid,
    orphans,
    save_launch_state,
)
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
    watch: EarlyExits


def launch_command(directory: Path, *, timeout: float, only: Sequence[str] = ()) -> int:
    deployment = load_deployment(directory)
    check_this_host(deployment)
    running = launcher_pid(deployment)
    if running is not None:
        raise LaunchError(f"{directory} is already launched (pid {running}); "
                          f"`crate-deploy stop {directory}` stops it")
    lock = hold_launch_lock(deployment)
    try:
        refuse_beside_orphans(deployment)
        return _launch(deployment, timeout, only)
    finally:
        os.close(lock)


def _launch(deployment: Deployment, timeout: float, only: Sequence[str]) -> int:
    site = deployment.site
    secrets = read_secrets(site)
    check_flower_passwords(site, secrets)
    mask = masker_for(secrets)
    sink = MaskingSink(sys.stdout, mask)
    urls = broker_urls(site, secrets)
    probe.check_broker(urls, mask)
    specs, deployment = _selection(deployment, _process_specs(deployment), only)
    # Before anything starts, check's cheap part: each service's program and working
    # directory (named by service), secrets, Flower installed, paths, Flower's port.
    refuse_unless_clear(deployment, sandboxed=False)
    specs = [tagged(spec) for spec in specs]
    ensure_directory(Path(deployment.state_dir), mode=0o700, owner=_owner(specs))
    save_launch_state(deployment, {})  # before any service starts: stop can find us
    say = LoggingPrinter(sink, [spec.name for spec in specs] + [NAME], deployment, mask,
                         services=[spec.name for spec in specs])
    for warning in filter(None, [secrets_file_warning(site), _identity_warning(specs)]):
        say.line(NAME, f"warning: {warning}")
    # One printer for the services and for us: one name width, one lock.
    supervisor = Supervisor(specs, printer=say, on_start=lambda name, pid: _record(fleet),
                            on_exit=lambda *exit: fleet.watch.on_exit(*exit))
    watch = EarlyExits(supervisor.last_lines, supervisor.request_stop,
                       lambda: supervisor.stopping)
    fleet = _Fleet(deployment, urls, secrets, supervisor, say, mask, watch)
    try:
        return _supervise(fleet, timeout)
    finally:
        say.close()


def stop_command(directory: Path, *, timeout: float | None = None) -> int:
    """Ask a foreground launch (found through its state file) to stop, and wait for it;
    or stop the target of a fleet launched under systemd."""
    deployment = load_deployment(directory)
    pid = launcher_pid(deployment)
    limit = timeout if timeout is not None else longest_stop(deployment) + 30.0
    if pid is None:
        living = orphans(deployment)
        if living:
            return stop_orphans(deployment, living, limit)
        stopped = stop_systemd(deployment, limit)
        if stopped is not None:
            return stopped
        print(f"{NAME}: nothing launched from {directory} is running")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        raise LaunchError(f"launch (pid {pid}) runs as another user: run `crate-deploy stop` "
                          "as that user or as root") from None
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
    plan = build_plan(deployment.site, deployment.config_dir, deployment.host)
    return [_as_unit_user(process_spec(service, base)) for service in plan.services]


def _selection(deployment: Deployment, specs: list[ProcessSpec],
               only: Sequence[str]) -> tuple[list[ProcessSpec], Deployment]:
    """The services to run (launch --only narrows them, and readiness with them)."""
    if only:
        chosen = resolve_services(deployment, only)
        specs, deployment = [s for s in specs if s.name in chosen], narrowed(deployment, chosen)
    return specs, deployment


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
    with stop_on_signals(fleet.supervisor), \
            restart_on_signal(fleet.deployment, fleet.supervisor.request_restart):
        thread.start()
        try:
            ready = _wait_until_ready(fleet, thread, timeout)
        finally:
            # Not ready, or the wait failed: stop the fleet before leaving, or its
            # processes (each in a session of its own) would outlive us unsupervised.
            if not ready and thread.is_alive() and fleet.watch.failure is None:
                fleet.supervisor.request_stop()  # (a failure asked for its warm stop already)
            try:
                while thread.is_alive():
                    thread.join(0.2)  # short joins keep signal handlers responsive
            finally:
                clear_launch_state(fleet.deployment)
    return _conclude(fleet, outcome[0] if outcome else None, ready)


def _wait_until_ready(fleet: _Fleet, thread: threading.Thread, timeout: float) -> bool:
    ready = wait_until_ready(fleet.deployment.site, fleet.urls, fleet.secrets, fleet.mask,
                             timeout=timeout,
                             alive=lambda: thread.is_alive() and fleet.watch.failure is None,
                             say=lambda text: fleet.say.line(NAME, text),
                             share=fleet.deployment.host)
    if ready:
        fleet.watch.ready.set()
        fleet.say.line(NAME, "Ctrl-C (or `crate-deploy stop`) stops the fleet warmly: "
                       "running tasks finish")
    return ready


def _conclude(fleet: _Fleet, result: SupervisorResult | None, ready: bool) -> int:
    if result is None:
        raise LaunchError("the supervisor ended without a result")

    def say(text: str) -> None:
        fleet.say.line(NAME, text)

    if fleet.watch.failure is not None:
        return report_failure(say, fleet.watch.failure)
    if result.crash_loop is not None:
        return report_failure(say, result.crash_loop)
    if result.killed_after_timeout:
        fleet.say.line(NAME, "error: killed after the stop timeout (tasks may have been "
                       f"interrupted): {', '.join(result.killed_after_timeout)}")
        return 1
    if not ready:
        return report_not_ready(say, fleet.watch, fleet.supervisor.last_lines)
    fleet.say.line(NAME, "stopped" + ("" if result.clean else " (some exits were not clean: "
                                      f"{result.exit_statuses})"))
    return 0 if result.clean else 1


def _record(fleet: _Fleet) -> None:
    save_launch_state(fleet.deployment, fleet.supervisor.pids())

