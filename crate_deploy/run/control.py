"""Operator commands on a running fleet: `restart [SERVICE]` (and `stop` under systemd),
and the names they take.

A foreground launch is asked through a request file in the output directory (mode
0600, written atomically) and SIGUSR1 to the launch process, after its pid has been
verified against the launch state file (pid and start time, as `stop` does); the
launch restarts each named service warmly -- the stop signal, running tasks finish,
then a start -- and records the new pid, which this command waits for. Under systemd
it is `systemctl restart`, which the units make just as warm (KillMode=mixed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType

import click

from crate_deploy.errors import LaunchError, UsageError
from crate_deploy.run.install import manager_problem, unit_dir
from crate_deploy.state.deployment import (
    Deployment,
    broker_urls,
    load_deployment,
    masker_for,
    read_secrets,
)
from crate_deploy.state.launch import launcher_pid, read_launch_state
from crate_deploy.write import remove_file, write_file_atomically

RESTART_REQUEST = ".crate-deploy-restart.json"
RESTART_SIGNAL = signal.SIGUSR1


def resolve_services(deployment: Deployment, wanted: Sequence[str]) -> list[str]:
    """The service names (without .service) that wanted means; all of them when empty.

    Each may be the unit (demo-worker-quick.service), its name (demo-worker-quick),
    without the project (worker-quick, beat, flower), or a pool's name (quick).
    """
    services = [name.removesuffix(".service") for name in deployment.services]
    if not wanted:
        return services
    prefix = f"{deployment.site.project}-"
    aliases: dict[str, str] = {}
    for service in services:
        short = service.removeprefix(prefix)
        for alias in (service, f"{service}.service", short, short.removeprefix("worker-")):
            aliases.setdefault(alias, service)
    unknown = [name for name in wanted if name not in aliases]
    if unknown:
        raise UsageError(f"no service {', '.join(map(repr, unknown))} in "
                         f"{deployment.directory}: choose from {', '.join(services)}")
    chosen = {aliases[name] for name in wanted}
    return [service for service in services if service in chosen]


# --- the launch's side --------------------------------------------------------------


@contextlib.contextmanager
def restart_on_signal(deployment: Deployment,
                      restart: Callable[[list[str]], None]) -> Iterator[None]:
    """While a foreground launch runs: SIGUSR1 restarts what the request file names.

    restart is the supervisor's request_restart; the handler runs in the main thread,
    between bytecodes, so reading a small file there is safe.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        names = _take_request(deployment)
        if names:
            restart(names)

    previous = signal.signal(RESTART_SIGNAL, handler)
    try:
        yield
    finally:
        signal.signal(RESTART_SIGNAL, previous if previous is not None else signal.SIG_DFL)
        remove_file(deployment.directory / RESTART_REQUEST)


def _take_request(deployment: Deployment) -> list[str]:
    path = deployment.directory / RESTART_REQUEST
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        remove_file(path)
    except (OSError, ValueError):
        return []
    known = {name.removesuffix(".service") for name in deployment.services}
    names = document.get("services") if isinstance(document, dict) else None
    return [name for name in names or [] if isinstance(name, str) and name in known]


# --- the command ----------------------------------------------------------------------


def restart_command(directory: Path, wanted: Sequence[str], *, timeout: float | None) -> int:
    deployment = load_deployment(directory)
    services = resolve_services(deployment, wanted)
    pid = launcher_pid(deployment)
    if pid is not None:
        return _restart_foreground(deployment, pid, services, timeout)
    if _installed_in_systemd(deployment) and manager_problem(_user(deployment)) is None:
        return _restart_systemd(deployment, services, timeout)
    raise LaunchError(f"nothing launched from {directory} is running: "
                      f"`crate-deploy launch {directory}` starts it")


def _restart_foreground(deployment: Deployment, pid: int, services: list[str],
                        timeout: float | None) -> int:
    before = {name: state[0] for name, state in (read_launch_state(deployment) or {}).items()}
    running = [name for name in services if name in before]
    if not running:
        raise LaunchError(f"the launch (pid {pid}) runs none of {', '.join(services)} "
                          "(was it started with --only?)")
    write_file_atomically(deployment.directory / RESTART_REQUEST,
                          json.dumps({"services": running}) + "\n", mode=0o600)
    os.kill(pid, RESTART_SIGNAL)
    limit = timeout if timeout is not None else longest_stop(deployment) + 30.0
    click.echo(f"crate-deploy: asked launch (pid {pid}) to restart {', '.join(running)}; "
               f"running tasks finish first (up to {limit:g}s)")
    deadline = time.monotonic() + limit
    waiting = list(running)
    while waiting and time.monotonic() < deadline:
        now = read_launch_state(deployment)
        if now is None:
            raise LaunchError(f"the launch (pid {pid}) ended during the restart")
        for name in list(waiting):
            new, alive = now.get(name, (before[name], False))
            if new != before[name] and alive:
                click.echo(f"restarted {name} (pid {before[name]} -> {new})")
                waiting.remove(name)
        time.sleep(0.2)
    if waiting:
        raise LaunchError(f"{', '.join(waiting)} did not start again within {limit:g}s: "
                          f"see `crate-deploy logs {waiting[0]} {deployment.directory}`")
    return _wait_until_answering(deployment, running, lambda: launcher_pid(deployment) == pid)


def _wait_until_answering(deployment: Deployment, services: list[str],
                          alive: Callable[[], bool], timeout: float = 120.0) -> int:
    """A new process is not a working one: wait until the restarted pools (and Flower)
    answer, as launch does."""
    from crate_deploy.inspect.readiness import wait_until_ready

    site = narrowed(deployment, services).site
    secrets = read_secrets(site)
    mask = masker_for(secrets)
    ready = wait_until_ready(site, broker_urls(site, secrets), secrets, mask, timeout=timeout,
                             alive=alive, say=lambda text: click.echo(mask(text)),
                             share=deployment.host)
    return 0 if ready else 1


def _restart_systemd(deployment: Deployment, services: list[str],
                     timeout: float | None) -> int:
    from crate_deploy.run.unit_watch import UnitWatch, wait_for_units

    units = [f"{name}.service" for name in services]
    _systemctl(deployment, "restart", *units)
    click.echo(f"restarted {', '.join(services)} (systemd)")
    # As launch --systemd: a restarted unit that fails for certain is named at once.
    watch = UnitWatch.starting_now(units, user=_user(deployment), ours=units,
                                   stop=lambda failing: _systemctl(deployment, "stop", *failing))
    return wait_for_units(narrowed(deployment, services), watch,
                          timeout=timeout if timeout is not None else 120.0)


def stop_systemd(deployment: Deployment, timeout: float) -> int | None:
    """`stop` of a fleet launch --systemd started: `systemctl stop TARGET`, which returns
    once every service has stopped warmly (the units are ordered after their target).
    None when it was not installed, or every service is inactive or failed.

    A unit between two restarts ("activating (auto-restart)") is running for this
    purpose: stopping ends its loop. Where the manager cannot be asked, that is an error,
    never "nothing is running"."""
    from crate_deploy.run.unit_watch import unit_states

    user = _user(deployment)
    if not _installed_in_systemd(deployment):
        return None
    scope, target = " --user" if user else "", deployment.target
    if (problem := manager_problem(user)) is not None:
        raise LaunchError(f"cannot tell whether {target} runs: {problem}")
    states = unit_states(deployment.services, user=user)
    if states is None:
        raise LaunchError(f"cannot tell whether {target} runs: `systemctl{scope} show` did not "
                          "answer for its services")
    if all(state in ("inactive", "failed") for state in states.values()):
        return None
    click.echo(f"crate-deploy: stopping {target} (systemctl{scope} stop); running tasks may "
               f"take up to {timeout:g}s to finish")
    try:
        _systemctl(deployment, "stop", target, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{target} did not stop within {timeout:g}s: see "
                          f"`systemctl{scope} status {target}`") from None
    # Still enabled: the next boot (or login) starts it, as it would a stopped unit.
    click.echo(f"crate-deploy: stopped {target}; `systemctl{scope} start {target}` starts "
               "it again")
    return 0


def _systemctl(deployment: Deployment, *args: str, timeout: float = 900) -> None:
    argv = ["systemctl", *(["--user"] if _user(deployment) else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
        raise LaunchError(f"`{' '.join(argv)}` failed: {said}")


def _installed_in_systemd(deployment: Deployment) -> bool:
    return (Path(unit_dir(_user(deployment))) / deployment.services[0]).is_file()


def _user(deployment: Deployment) -> bool:
    return deployment.site.systemd.scope == "user"


def longest_stop(deployment: Deployment) -> float:
    """The longest a warm stop of this fleet may take (its longest stop timeout)."""
    from crate_deploy.site.checks import stop_timeout

    site = deployment.site
    return max([stop_timeout(site, worker) for worker in site.workers] + [60.0])


def narrowed(deployment: Deployment, services: Sequence[str]) -> Deployment:
    """The deployment as `launch --only SERVICES` sees it: readiness waits only for the
    pools and the Flower among them, and reports beat only when it runs."""
    site = deployment.site
    chosen = set(services)
    project = site.project
    workers = [worker for worker in site.workers
               if f"{project}-worker-{worker.name}" in chosen]
    narrowed_site = site.model_copy(update={
        "workers": workers,
        "beat": site.beat.model_copy(
            update={"enabled": site.beat.enabled and f"{project}-beat" in chosen}),
        "flower": site.flower.model_copy(
            update={"enabled": site.flower.enabled and f"{project}-flower" in chosen}),
    })
    return replace(deployment, site=narrowed_site,
                   services=[name for name in deployment.services
                             if name.removesuffix(".service") in chosen])


def services_and_directory(words: Sequence[str], default: Path) -> tuple[list[str], Path]:
    """`logs`/`restart` take [SERVICE...] [DIRECTORY] in any order: the word naming a
    directory is the output directory, the rest are services."""
    directories = [word for word in words if Path(word).is_dir()]
    if len(directories) > 1:
        raise UsageError(f"more than one output directory: {', '.join(directories)}")
    services = [word for word in words if word not in directories]
    return services, Path(directories[0]) if directories else default
