"""Is the fleet up? Ask the broker, the workers and Flower, the way an operator would.

Used by launch (repeatedly, until everything is ready) and by status (once). Talks
to the broker with crate-deploy's own kombu/Celery, never through the
application's app object, so it works without importing the application.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from crate_deploy.errors import LaunchError
from crate_deploy.plan.placement import fleet_nodes
from crate_deploy.secrets import Masker
from crate_deploy.site.model import Site


@dataclass(frozen=True)
class PoolHealth:
    name: str
    node: str
    answering: bool
    queues: list[str]
    expected: list[str]
    host: str | None = None  # the site's host it runs on (None: a site without hosts:)

    @property
    def up(self) -> bool:
        return self.answering and sorted(self.queues) == sorted(self.expected)


@dataclass(frozen=True)
class QueueDepth:
    name: str
    ready: int | None
    unacked: int
    consumers: int | None
    error: str | None = None


@dataclass(frozen=True)
class FlowerHealth:
    url: str
    up: bool
    detail: str


@dataclass
class FleetHealth:
    pools: list[PoolHealth] = field(default_factory=list)
    queues: list[QueueDepth] = field(default_factory=list)
    flower: FlowerHealth | None = None

    def missing(self) -> list[str]:
        """What is not up yet, in words."""
        missing = [f"pool {pool.name}{f' on host {pool.host}' if pool.host else ''} "
                   f"({pool.node}: {_pool_problem(pool)})" for pool in self.pools if not pool.up]
        if self.flower and not self.flower.up:
            missing.append(f"Flower ({self.flower.url}: {self.flower.detail})")
        return missing


def _pool_problem(pool: PoolHealth) -> str:
    if not pool.answering:
        return "no answer to ping"
    return f"consumes {', '.join(pool.queues) or 'nothing'}, expected {', '.join(pool.expected)}"


def control_app(urls: list[str], timeout: float) -> Any:
    """A bare Celery app on the site's broker, for control commands and queue checks."""
    from celery import Celery

    app = Celery("crate-deploy-probe", broker=urls, set_as_current=False)
    app.conf.update(broker_connection_timeout=timeout, broker_connection_retry=False,
                    broker_connection_max_retries=0, accept_content=["json"],
                    task_serializer="json", result_backend=None)
    return app


def broker_errors(app: Any) -> tuple[type[BaseException], ...]:
    """What a lost or refused broker connection raises: kombu's OperationalError (what
    it re-raises connection errors as) and the transport's own errors."""
    from kombu.exceptions import OperationalError

    connection = app.connection_for_write()  # not connected yet: this only names its errors
    try:
        return (OSError, OperationalError, *connection.connection_errors,
                *connection.channel_errors)
    finally:
        connection.release()


def check_broker(urls: list[str], mask: Masker, timeout: float = 5.0) -> None:
    """Raise a clear LaunchError (URL masked) unless at least one broker URL answers."""
    from kombu.connection import Connection

    failures = []
    for url in urls:
        try:
            with Connection(url, connect_timeout=timeout) as connection:  # type: ignore[no-untyped-call]
                connection.ensure_connection(max_retries=0, timeout=timeout)
                return
        except Exception as exc:  # any failure means "unreachable"
            failures.append(f"{mask(url)}: {mask(str(exc)) or type(exc).__name__}")
    raise LaunchError("the broker is unreachable: " + "; ".join(failures))


def pool_health(app: Any, site: Site, hostname: str, timeout: float = 1.0,
                share: str | None = None, *, bound_only: bool = False) -> list[PoolHealth]:
    """Every expected node (see placement.fleet_nodes): answering, and on which queues.
    Each broadcast stops waiting as soon as every node asked has replied (`limit`), so a
    healthy fleet answers at once and only a silent node costs the whole timeout.

    bound_only: ask only the nodes already consuming their control queue (the others are
    reported not answering): a ping broadcast before a starting worker binds that queue
    never reaches it, and would cost the whole timeout for nothing."""
    nodes = fleet_nodes(site, hostname, share)
    asked = [node.name for node in nodes]
    if bound_only:
        listening = listening_for_control(app, asked)
        asked = [name for name in asked if listening[name] is not False]
    replies = (app.control.ping(destination=asked, timeout=timeout, limit=len(asked))
               if asked else None) or []
    answering = {node for reply in replies for node in reply}
    active = (_inspect(app, answering, timeout).active_queues() or {}) if answering else {}
    return [PoolHealth(node.pool, node.name, node.name in answering,
                       sorted(queue["name"] for queue in active.get(node.name, [])),
                       sorted(node.queues), node.host) for node in nodes]


def listening_for_control(app: Any, nodes: list[str]) -> dict[str, bool | None]:
    """Whether each node consumes its control queue (kombu's pidbox, NODE.celery.pidbox)
    yet, by passive declares over one connection; None where that cannot be told (not an
    AMQP broker: Redis delivers control messages by pub/sub, with no queue to look at)."""
    if not _is_amqp(app):
        return dict.fromkeys(nodes)
    queues = {f"{node}.celery.pidbox": node for node in nodes}
    return {queues[queue]: (bool(answer[1]) if isinstance(answer, tuple) else
                            _CONTROL_QUEUE_BY_REPLY.get(getattr(answer, "reply_code", None)))
            for queue, answer in declare_passively(app, list(queues))}


def _is_amqp(app: Any) -> bool:
    connection = app.connection_for_write()  # not connected yet: only its transport named
    try:
        return bool(connection.transport.driver_type == "amqp")
    finally:
        connection.release()


QueueAnswer = tuple[int, int | None]  # (ready messages, consumers; None: not countable)


def declare_passively(app: Any, names: list[str]) -> list[tuple[str, QueueAnswer | Exception]]:
    """Each queue's (ready messages, consumers) as the broker answers a passive declare,
    or the error it refused with (a missing queue, another connection's exclusive one),
    over one connection. The broker closes a channel it refuses: each name gets its own.

    On a broker kombu emulates (Redis), a queue is a list that exists only while it holds
    messages, so "no such queue" means empty, and consumers are not counted (kombu
    answers 0 whoever consumes): they are None there, never a false 0."""
    answers: list[tuple[str, QueueAnswer | Exception]] = []
    with app.connection_for_write() as connection:
        amqp = connection.transport.driver_type == "amqp"
        for name in dict.fromkeys(names):
            channel = connection.channel()
            try:
                _, ready, consumers = channel.queue_declare(queue=name, passive=True)
                answers.append((name, (int(ready), int(consumers) if amqp else None)))
            except Exception as exc:
                # (kombu names the code as the string "404" here, py-amqp as an int)
                empty = not amqp and str(getattr(exc, "reply_code", "")) == "404"
                answers.append((name, (0, None) if empty else exc))
            finally:
                _close_quietly(channel)
    return answers


# What a refused passive declare of a control queue says: 404, not declared yet; 405,
# declared exclusive by another connection (Celery 5.6 and later declare it exclusive,
# and consume it on the connection that declared it).
_CONTROL_QUEUE_BY_REPLY: dict[object, bool | None] = {404: False, 405: True}


def _inspect(app: Any, nodes: set[str], timeout: float) -> Any:
    return app.control.inspect(destination=sorted(nodes), timeout=timeout, limit=len(nodes))


def queue_depths(app: Any, site: Site, timeout: float = 1.0,
                 nodes: set[str] | None = None) -> list[QueueDepth]:
    """Ready messages and consumers by passive declare (no management plugin needed);
    unacknowledged = tasks the workers hold (running or reserved) from each queue, asked
    of `nodes` (default: every node of the site, see placement.fleet_nodes)."""
    if nodes is None:
        nodes = {node.name for node in fleet_nodes(site, hostname())}
    unacked = _held_by_workers(app, nodes, timeout)
    return [QueueDepth(name, answer[0], unacked[name], answer[1])
            if isinstance(answer, tuple) else
            QueueDepth(name, None, unacked[name], None, _short(answer) or "not declared yet")
            for name, answer in declare_passively(app, site.queue_names)]


def flower_health(site: Site, credentials: tuple[str, str] | None,
                  timeout: float = 2.0) -> FlowerHealth:
    """Flower answers its health check, and refuses the UI without credentials."""
    base = _flower_base(site)
    status = http_status(base + "healthcheck", None, timeout)
    if status != 200:
        return FlowerHealth(base, False, f"health check answered {status or 'nothing'}")
    if credentials is None:
        return FlowerHealth(base, True, "up, no auth (loopback only)")
    anonymous = http_status(base, None, timeout)
    if anonymous != 401:
        return FlowerHealth(base, False, f"answers {anonymous} without credentials")
    user = credentials[0]
    for wrong in ("", f"{credentials[1]}-not-{secrets.token_hex(4)}"):
        answer = http_status(base, (user, wrong), timeout)
        if answer != 401:
            what = "an empty password" if not wrong else "a wrong password"
            return FlowerHealth(base, False, f"answers {answer} to user {user} with {what}")
    with_auth = http_status(base, credentials, timeout)
    if with_auth != 200:
        return FlowerHealth(base, False, f"refuses the site's own credentials ({with_auth})")
    return FlowerHealth(base, True, f"up, auth enforced (user {credentials[0]})")


def flower_lists_workers(site: Site, credentials: tuple[str, str] | None, nodes: list[str],
                         timeout: float = 5.0) -> bool:
    """Ask Flower to refresh each node (/api/workers?refresh=1&workername=NODE) and say
    whether every one is listed. Flower started before the workers answers {} until
    something asks it to refresh; asked once, it lists them from then on. One request per
    node, all at once: Flower then inspects that node alone, and Celery stops waiting at
    its reply, where a refresh of every worker waits Flower's whole inspect timeout (1 s).
    Without auth Flower's API is shut (401), so there is nothing to ask: True."""
    if credentials is None or not nodes:
        return True
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        return all(pool.map(lambda node: _flower_lists(site, credentials, node, timeout),
                            nodes))


def _flower_lists(site: Site, credentials: tuple[str, str], node: str,
                  timeout: float) -> bool:
    query = urllib.parse.urlencode({"refresh": 1, "workername": node})
    request = _request(f"{_flower_base(site)}api/workers?{query}", credentials)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            listed = json.loads(response.read())
    except (OSError, ValueError):  # 404: Flower does not know the node (yet)
        return False
    return isinstance(listed, dict) and node in listed


def _flower_base(site: Site) -> str:
    flower = site.flower
    host = "127.0.0.1" if flower.address in ("0.0.0.0", "", "::") else flower.address  # noqa: S104
    return f"http://{host}:{flower.port}/" + (f"{flower.url_prefix}/" if flower.url_prefix else "")


def hostname() -> str:
    """What Celery's %h expands to on this machine."""
    return socket.gethostname()


def _held_by_workers(app: Any, nodes: set[str], timeout: float) -> Counter[str]:
    held: Counter[str] = Counter()
    if not nodes:
        return held
    inspect = _inspect(app, nodes, timeout)
    for replies in (inspect.active() or {}, inspect.reserved() or {}):
        for tasks in replies.values():
            for task in tasks:
                held[task.get("delivery_info", {}).get("routing_key", "?")] += 1
    return held


def http_status(url: str, credentials: tuple[str, str] | None = None,
                timeout: float = 5.0) -> int | None:
    """The HTTP status a GET of url answers (None: nothing answered)."""
    request = _request(url, credentials)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def _request(url: str, credentials: tuple[str, str] | None) -> urllib.request.Request:
    """A GET of url (http to the site's own Flower), with Basic auth when given."""
    request = urllib.request.Request(url)  # noqa: S310
    if credentials:
        token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _close_quietly(channel: Any) -> None:
    with contextlib.suppress(Exception):  # the broker may already have closed it
        channel.close()
