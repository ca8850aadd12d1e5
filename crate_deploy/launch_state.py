"""The state file a foreground launch keeps in the output directory, for stop and status."""

from __future__ import annotations

import json
import os
from typing import Any

from crate_deploy.deployment import Deployment
from crate_deploy.write import remove_file, write_file_atomically


def save_launch_state(deployment: Deployment, pids: dict[str, int]) -> None:
    document = {"launcher": os.getpid(), "services": pids}
    write_file_atomically(deployment.launch_state, json.dumps(document, indent=2) + "\n")


def clear_launch_state(deployment: Deployment) -> None:
    remove_file(deployment.launch_state)


def launcher_pid(deployment: Deployment) -> int | None:
    """The pid of the running `crate-deploy launch` for this directory, if there is one."""
    document = _read(deployment)
    if document is None:
        return None
    pid = int(document["launcher"])
    return pid if _alive(pid) else None


def read_launch_state(deployment: Deployment) -> dict[str, tuple[int, bool]] | None:
    """Each service's main pid and whether it is alive; None if no launch is running."""
    document = _read(deployment)
    if document is None or not _alive(int(document["launcher"])):
        return None
    return {name: (int(pid), _alive(int(pid))) for name, pid in document["services"].items()}


def _read(deployment: Deployment) -> dict[str, Any] | None:
    try:
        document = json.loads(deployment.launch_state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
