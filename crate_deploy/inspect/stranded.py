"""Work that cannot flow: queues in the site's vhost that hold messages nobody consumes.

A task sent by a process that does not use the site's routing lands on that process's
own default queue (`celery`), which no pool of the site may consume: it waits there
forever while every pool is up. With the RabbitMQ management API reachable (port
15672 on the broker's host, the broker's own credentials) every queue of the vhost is
looked at; otherwise `celery`, the site's queues and the queues the last `crate-deploy
check` saw the application send to. Either way a passive declare counts each one.

Not work: Celery's own control and event queues (*.pidbox, celeryev.*), result queues of
the rpc:// backend (named by a uuid), and the dead-letter queues (QUEUE.dead) where
parked tasks wait for `requeue` by design.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from crate_deploy.inspect.probe import declare_passively
from crate_deploy.site.model import Site

DEFAULT_QUEUE = "celery"  # what an app sends to when nothing tells it otherwise
MANAGEMENT_PORT = 15672
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class StrandedQueue:
    name: str
    ready: int
    consumers: int | None = 0  # None: the broker cannot count them (Redis)


def is_work_queue(name: str) -> bool:
    """False for Celery's own bookkeeping queues and for parked dead letters."""
    return not (name.endswith((".pidbox", ".dead")) or name.startswith(("celeryev.", "amq."))
                or _UUID.match(name))


def stranded_queues(app: Any, site: Site, urls: list[str], app_queues: list[str],
                    timeout: float = 2.0) -> tuple[list[StrandedQueue], str]:
    """Queues holding ready messages and no consumer, and how they were found.
    app_queues: those the application was last seen sending to (by `check`).

    The management API only names the queues: its counts are statistics, refreshed every
    few seconds (a message published a moment ago shows as 0 there), so every queue is
    counted by a passive declare, which the broker answers from the queue itself."""
    listed = management_queues(urls[0], timeout) if urls[0].startswith("amqp") else None
    if listed is not None:
        source = "the management API (every queue of the vhost)"
        names = [name for name, _, _ in listed if is_work_queue(name)]
    else:
        source = (f"passive declares ({DEFAULT_QUEUE}, the site's queues and those `check` "
                  "saw the application send to)")
        names = [DEFAULT_QUEUE, *site.queue_names, *app_queues]
    # A queue a pool of the site consumes is not stranded when nothing consumes it: its
    # pool is down, which status reports as such (and `requeue --stranded` refuses it).
    consumed = site.consumed_queues
    names = [name for name in names if name not in consumed and is_work_queue(name)]
    # A queue that is not there (refused) holds nothing.
    return [StrandedQueue(name, answer[0], answer[1])
            for name, answer in declare_passively(app, names)
            if isinstance(answer, tuple) and answer[0] and not answer[1]], source


def management_queues(url: str, timeout: float,
                      port: int = MANAGEMENT_PORT) -> list[tuple[str, int, int]] | None:
    """(name, ready, consumers) of every queue in url's vhost, or None if the API is not
    reachable there (plugin off, another port, refused credentials). The counts are the
    API's statistics, a few seconds old: good for names, not for deciding."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    api = (f"http://{parts.hostname}:{port}/api/queues/{quote(vhost, safe='')}"
           "?columns=name,messages_ready,consumers")
    request = urllib.request.Request(api)
    user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            rows = json.loads(response.read())
    except (OSError, ValueError, urllib.error.HTTPError):
        return None
    return [(str(row["name"]), int(row.get("messages_ready") or 0), int(row.get("consumers") or 0))
            for row in rows if isinstance(row, dict) and "name" in row]

