"""The queues the application was last seen sending to: written by `check` (which loads
the application), read by `status`, so that status can look for work stranded there even
without RabbitMQ's management API (a passive declare needs the queue's name)."""

from __future__ import annotations

import contextlib
import json

from crate_deploy.plan.names import APP_QUEUES_FILE
from crate_deploy.state.deployment import Deployment
from crate_deploy.write import write_file_atomically


def remember_app_queues(deployment: Deployment, queues: set[str]) -> None:
    with contextlib.suppress(OSError):  # a read-only render directory: status asks less
        write_file_atomically(deployment.directory / APP_QUEUES_FILE,
                              json.dumps(sorted(queues)) + "\n")


def app_queues(deployment: Deployment) -> list[str]:
    """What the last `check` found the application sending to (none before a check)."""
    try:
        queues = json.loads((deployment.directory / APP_QUEUES_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return []
    return [str(queue) for queue in queues] if isinstance(queues, list) else []
