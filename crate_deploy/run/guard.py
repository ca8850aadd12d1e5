"""One foreground launch per output directory, and what a killed one left behind.

Two launches at once ran two beats (every periodic task twice); a SIGKILLed launch left
its services running under init, invisible to stop and status, beside which the next
launch started a second fleet. The launch lock (flock on a file in the output
directory) serialises launches and dies with its holder; the state file's services,
verified as ours (state/launch.py), are the orphans that stop stops and launch refuses
to start beside.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

from crate_deploy.errors import CrateDeployError, LaunchError
from crate_deploy.locking import Busy, open_lock_file, take_lock
from crate_deploy.run.policy import ProcessSpec
from crate_deploy.state.deployment import Deployment
from crate_deploy.state.launch import (
    LAUNCH_TAG,
    clear_launch_state,
    launch_lock_path,
    launch_tag,
    orphans,
    still_ours,
)


def hold_launch_lock(deployment: Deployment) -> int:
    """Take the directory's launch lock; the caller keeps the descriptor open while it
    runs (closing it, or dying, releases the lock)."""
    path = launch_lock_path(deployment)
    try:
        descriptor = open_lock_file(path, create=True)
    except OSError as exc:
        raise LaunchError(f"cannot open the launch lock {path}: {exc.strerror or exc}") from None
    except CrateDeployError as exc:
        raise LaunchError(str(exc)) from None
    assert descriptor is not None
    try:
        take_lock(descriptor, exclusive=True, wait=False, path=path)
    except Busy:
        os.close(descriptor)
        raise LaunchError(f"{deployment.directory} is being launched by another `crate-deploy "
                          "launch` (it holds the launch lock); `crate-deploy stop "
                          f"{deployment.directory}` stops it") from None
    return descriptor


def refuse_beside_orphans(deployment: Deployment) -> None:
    living = orphans(deployment)
    if living:
        raise LaunchError(f"services of an earlier launch of {deployment.directory} still run "
                          f"({_listed(living)}): its launch was killed; `crate-deploy stop "
                          f"{deployment.directory}` stops them warmly, then launch again")


def tagged(spec: ProcessSpec) -> ProcessSpec:
    """The spec with this launch's tag in its environment, by which stop knows it."""
    return replace(spec, env={**spec.env, LAUNCH_TAG: launch_tag()})


def stop_orphans(deployment: Deployment, living: dict[str, int], limit: float) -> int:
    """Stop a killed launch's services warmly (SIGTERM to each main process, as
    KillMode=mixed does) and wait for them; only pids verified as ours are signalled."""
    for name, pid in living.items():
        if not still_ours(deployment, name, pid):
            raise LaunchError(f"{name} (pid {pid}) runs, but cannot be verified as a service "
                              "of this directory's launch (its environment is not readable "
                              "by this user): run `crate-deploy stop` as root or as the "
                              "service's user")
        _signal(name, pid, signal.SIGTERM)
        _signal(name, pid, signal.SIGCONT)  # a stopped process must wake to obey
    print(f"crate-deploy: the launch of {deployment.directory} is gone, but its services "
          f"still ran ({_listed(living)}); asked them to stop warmly: running tasks may "
          f"take up to {limit:g}s to finish")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not orphans(deployment):
            clear_launch_state(deployment)
            print("crate-deploy: stopped")
            return 0
        time.sleep(0.2)
    raise LaunchError(f"{_listed(orphans(deployment))} did not stop within {limit:g}s")


def _signal(name: str, pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it ended meanwhile
    except PermissionError:
        raise LaunchError(f"{name} (pid {pid}) runs as another user: run `crate-deploy stop` "
                          "as that user or as root") from None


def _listed(pids: dict[str, int]) -> str:
    return ", ".join(f"{name} pid {pid}" for name, pid in pids.items())
