"""Support for the cluster fault tests (test_cluster_faults.py): a fault site whose broker
list is the three nodes of a tests.integration.rabbit_cluster cluster, and ways to see
which node a worker and a queue are on."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.integration.conftest import DemoSite, node, run_crate_deploy
from tests.integration.fault_support import POOL, QUEUE, Publisher, fault_site
from tests.integration.rabbit_cluster import Node, RabbitCluster

# Each venv's queue: quorum (with a delivery limit and dead-lettering) where the target's
# Celery can consume it (5.5+), classic where it cannot (5.2.7: refused at validation).
QUEUES: dict[str, dict[str, Any]] = {
    "celery57": {"type": "quorum", "delivery_limit": 3, "dead_letter": True},
    "celery52": {},
}


# Celery 5.2.7's worker exits with status 0 after an "Unrecoverable error" (its CLI
# returns the exit code instead of exiting with it; celery issue 7358), which a classic
# queue whose node is down causes (404 NOT_FOUND on declare): Restart=on-failure would
# leave it down for good. What a 5.2.7 site on a cluster needs, and what its tests use.
RESTART_ALWAYS = {"restart": "always", "restart_sec": 1, "start_limit_burst": 30}


def cluster_site(tmp: Path, cluster: RabbitCluster, vhost: str, venv: Path, venv_key: str,
                 *, concurrency: int = 4, broker: dict[str, Any] | None = None) -> DemoSite:
    """A fault site (one pool `w` on `work`) whose broker list is A, B, C in that order."""
    urls = [f"amqp://guest:${{BROKER_PASSWORD}}@{n.address}/{vhost}" for n in cluster.nodes]
    overrides: dict[str, Any] = {"broker": {"urls": urls, **(broker or {})}}
    if venv_key == "celery52":
        overrides["systemd"] = RESTART_ALWAYS
    site = fault_site(tmp, vhost, venv, concurrency=concurrency, queue=QUEUES[venv_key],
                      overrides=overrides, broker_host=cluster.nodes[0].address)
    # The test's own clients fail over along the same list (kombu's ';' form).
    site.broker_url = ";".join(cluster.urls(vhost))
    return site


def declare_queue_on(publisher: Publisher, cluster_node: Node, vhost: str) -> None:
    """Declare the work queue through cluster_node, with the rendered arguments, so that
    node holds it (a classic queue's home, a quorum queue's first leader: RabbitMQ puts
    them where they are declared) before any worker declares it elsewhere."""
    from kombu.connection import Connection

    queue = publisher.app.amqp.queues[QUEUE]
    with Connection(cluster_node.url(vhost)) as connection:
        queue.bind(connection.default_channel).declare()


def worker_stats(publisher: Publisher, timeout: float = 3.0) -> dict[str, Any] | None:
    """The pool's `inspect stats`, None if it does not answer (or the test's own
    connection broke with a node: ask again later)."""
    try:
        return publisher.control_stats(node(POOL), timeout=timeout)
    except Exception:
        return None


def worker_broker(publisher: Publisher) -> str | None:
    """host:port of the broker node the pool's worker is connected to (inspect stats)."""
    stats = worker_stats(publisher)
    if not stats:
        return None
    broker = stats.get("broker", {})
    return f"{broker.get('hostname')}:{broker.get('port')}"


def worker_on(publisher: Publisher, cluster: RabbitCluster) -> Node | None:
    address = worker_broker(publisher)
    return next((n for n in cluster.nodes if n.address == address), None)


def status(site: DemoSite) -> tuple[int, dict[str, Any], float]:
    """`crate-deploy status --json`: exit code, report, seconds it took."""
    started = time.monotonic()
    result = run_crate_deploy("status", str(site.out), "--json", timeout=120)
    took = time.monotonic() - started
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout), took
