"""Which broker nodes answer, and which node each worker is connected to.

A site whose broker list names the nodes of one RabbitMQ cluster keeps working while
some of them are down (the workers fail over), but an operator must know: `status`
asks every URL on its own, and each pool's worker for the broker it is connected to
(`inspect stats`: broker hostname and port). `broker.tolerate_down` says how many nodes
may be down before status fails; up to that many it warns.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from crate_deploy.secrets import Masker

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "pyamqp": 5672, "redis": 6379, "rediss": 6379}


@dataclass(frozen=True)
class BrokerNode:
    url: str  # masked
    address: str  # host:port, as a worker's `inspect stats` reports its broker
    up: bool
    error: str | None = None


def address(url: str) -> str:
    """host:port of a broker URL (the scheme's default port when it names none)."""
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    return f"{parts.hostname or 'localhost'}:{port}"


def broker_nodes(urls: list[str], mask: Masker, timeout: float = 3.0) -> list[BrokerNode]:
    """Connect to every broker URL on its own (at once), without failing over."""
    def probe(url: str) -> BrokerNode:
        from kombu.connection import Connection

        try:
            with Connection(url, connect_timeout=timeout) as connection:  # type: ignore[no-untyped-call]
                connection.ensure_connection(max_retries=0, timeout=timeout)
        except Exception as exc:  # any failure means "this node does not answer"
            detail = mask(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return BrokerNode(mask(url), address(url), False, detail[:200])
        return BrokerNode(mask(url), address(url), True)

    with ThreadPoolExecutor(max(1, min(len(urls), 8))) as pool:
        return list(pool.map(probe, urls))


def worker_brokers(app: Any, nodes: list[str], timeout: float = 1.0) -> dict[str, str]:
    """Worker node name -> host:port of the broker it is connected to, for those that
    answer `inspect stats` within timeout."""
    if not nodes:
        return {}
    replies = app.control.inspect(destination=nodes, timeout=timeout,
                                  limit=len(nodes)).stats() or {}
    brokers = {}
    for node, stats in replies.items():
        broker = stats.get("broker") if isinstance(stats, dict) else None
        if isinstance(broker, dict) and broker.get("hostname"):
            brokers[node] = f"{broker['hostname']}:{broker.get('port')}"
    return brokers


def down_verdict(nodes: list[BrokerNode], tolerate_down: int) -> tuple[bool, list[str]]:
    """(whether the nodes down make the fleet count as not up, warnings to print)."""
    down = [node for node in nodes if not node.up]
    if not down:
        return False, []
    names = ", ".join(node.address for node in down)
    warning = (f"broker node(s) down: {names} ({len(down)} of {len(nodes)}; the site "
               f"tolerates {tolerate_down}: broker.tolerate_down)")
    return len(down) > tolerate_down, [warning]
