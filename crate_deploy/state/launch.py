"""The state file a foreground launch keeps in the output directory, for stop and status.

Whoever can write the output directory can forge this file, so nothing in it is taken
on trust before a signal is sent:
- the launcher is ours only if its pid is above 1, it started when the file says, and it
  holds the directory's launch lock (/proc/locks says who does);
- a service is ours only if it started when the file says and its environment carries
  the launch's tag (CRATE_DEPLOY_LAUNCH=launcher pid:start time), which launch gives
  every service it starts.
A launch that was SIGKILLed leaves its services running under init: they are found the
same way (orphans), so that stop can stop them, status can show them, and no second
launch starts beside them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from crate_deploy.locking import lock_holders
from crate_deploy.plan.names import LAUNCH_LOCK_FILE
from crate_deploy.state.deployment import Deployment
from crate_deploy.write import remove_file, write_file_atomically

LAUNCH_TAG = "CRATE_DEPLOY_LAUNCH"


def launch_lock_path(deployment: Deployment) -> Path:
    return deployment.directory / LAUNCH_LOCK_FILE


def launch_tag() -> str:
    """This process's tag for the services it starts: pid and start time."""
    return f"{os.getpid()}:{start_time(os.getpid())}"


def save_launch_state(deployment: Deployment, pids: dict[str, int]) -> None:
    """Record the launcher and each service (pid and start time); written before the
    first service starts, so a launch whose services all fail can still be stopped."""
    document = {"launcher": os.getpid(), "launcher_started": start_time(os.getpid()),
                "services": pids,
                "services_started": {name: start_time(pid) for name, pid in pids.items()}}
    write_file_atomically(deployment.launch_state, json.dumps(document, indent=2) + "\n")


def clear_launch_state(deployment: Deployment) -> None:
    remove_file(deployment.launch_state)


def launcher_pid(deployment: Deployment) -> int | None:
    """The pid of the running `crate-deploy launch` for this directory, if there is one."""
    document = _read(deployment)
    if document is None or not _launcher_alive(deployment, document):
        return None
    return int(document["launcher"])


def read_launch_state(deployment: Deployment) -> dict[str, tuple[int, bool]] | None:
    """Each service's main pid and whether it is alive; None if no launch is running."""
    document = _read(deployment)
    if document is None or not _launcher_alive(deployment, document):
        return None
    return {name: (int(pid), _as_recorded(document, name))
            for name, pid in document["services"].items()}


def orphans(deployment: Deployment) -> dict[str, int]:
    """Services of a launch that is gone (SIGKILLed) and still running (by pid and start
    time: enough to report them and to refuse a second launch; still_ours() is what
    allows a signal)."""
    document = _read(deployment)
    if document is None or _launcher_alive(deployment, document):
        return {}
    return {name: int(pid) for name, pid in document["services"].items()
            if _as_recorded(document, name)}


def still_ours(deployment: Deployment, name: str, pid: int) -> bool:
    """Whether pid is still that service (checked again right before each signal)."""
    document = _read(deployment)
    return document is not None and document["services"].get(name) == pid and _ours(
        document, name)


def _read(deployment: Deployment) -> dict[str, Any] | None:
    try:
        document = json.loads(deployment.launch_state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if _well_formed(document) else None  # else no launch we can know


def _well_formed(document: Any) -> bool:
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        return False
    started = document.get("services_started", {})
    return isinstance(started, dict) and all(
        isinstance(pid, int) and not isinstance(pid, bool)
        for pid in [document.get("launcher"), *document["services"].values()])


def _launcher_alive(deployment: Deployment, document: dict[str, Any]) -> bool:
    pid, recorded = int(document["launcher"]), document.get("launcher_started")
    if pid <= 1 or recorded is None or start_time(pid) != recorded:
        return False  # no pid 1, no -1, no process that merely reuses the pid
    return pid in lock_holders(launch_lock_path(deployment))


def _as_recorded(document: dict[str, Any], name: str) -> bool:
    """The service's pid runs, and is the process that started when the file says."""
    pid = int(document["services"][name])
    recorded = document.get("services_started", {}).get(name)
    return pid > 1 and recorded is not None and start_time(pid) == recorded


def _ours(document: dict[str, Any], name: str) -> bool:
    if not _as_recorded(document, name):
        return False
    pid = int(document["services"][name])
    tag = f"{LAUNCH_TAG}={document['launcher']}:{document.get('launcher_started')}"
    return tag.encode() in _environ(pid)


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's: not known to be ours
        return []


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot, /proc/PID/stat field 22); None
    when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        fields = text[text.rindex(")") + 2:].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def started_at(pid: int) -> float | None:
    """When the process started, as a Unix time (for status's "since")."""
    ticks = start_time(pid)
    try:
        stat = Path("/proc/stat").read_text(encoding="ascii", errors="replace")
        boot = next(int(line.split()[1]) for line in stat.splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, StopIteration):
        return None
    return None if ticks is None else boot + ticks / os.sysconf("SC_CLK_TCK")

