"""The state file a foreground launch keeps in the output directory, for stop and status.

A launch that was SIGKILLed leaves its state file behind, and its pid may since have
gone to another process: the launcher's start time is kept too, so that `stop` never
signals (and `launch` never defers to) a process that merely reuses the pid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from crate_deploy.state.deployment import Deployment
from crate_deploy.write import remove_file, write_file_atomically


def save_launch_state(deployment: Deployment, pids: dict[str, int]) -> None:
    document = {"launcher": os.getpid(), "launcher_started": _start_time(os.getpid()),
                "services": pids}
    write_file_atomically(deployment.launch_state, json.dumps(document, indent=2) + "\n")


def clear_launch_state(deployment: Deployment) -> None:
    remove_file(deployment.launch_state)


def launcher_pid(deployment: Deployment) -> int | None:
    """The pid of the running `crate-deploy launch` for this directory, if there is one."""
    document = _read(deployment)
    if document is None:
        return None
    pid = int(document["launcher"])
    return pid if _launcher_alive(document) else None


def read_launch_state(deployment: Deployment) -> dict[str, tuple[int, bool]] | None:
    """Each service's main pid and whether it is alive; None if no launch is running."""
    document = _read(deployment)
    if document is None or not _launcher_alive(document):
        return None
    return {name: (int(pid), _alive(int(pid))) for name, pid in document["services"].items()}


def _read(deployment: Deployment) -> dict[str, Any] | None:
    try:
        document = json.loads(deployment.launch_state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if _well_formed(document) else None  # else no launch we can know


def _well_formed(document: Any) -> bool:
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        return False
    return all(isinstance(pid, int) for pid in [document.get("launcher"),
                                               *document["services"].values()])


def _launcher_alive(document: dict[str, Any]) -> bool:
    pid = int(document["launcher"])
    recorded = document.get("launcher_started")
    if not _alive(pid):
        return False
    # The same pid, started at another time, is another process.
    return recorded is None or _start_time(pid) in (None, recorded)


def _start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot, /proc/PID/stat field 22)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        return int(text[text.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def started_at(pid: int) -> float | None:
    """When the process started, as a Unix time (for status's "since")."""
    ticks = _start_time(pid)
    try:
        stat = Path("/proc/stat").read_text(encoding="ascii", errors="replace")
        boot = next(int(line.split()[1]) for line in stat.splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, StopIteration):
        return None
    return None if ticks is None else boot + ticks / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
