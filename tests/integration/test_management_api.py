"""status finds stranded work through RabbitMQ's real management API.

With the management API on the broker's host (port 15672, the broker's own credentials),
`status` looks at every queue of the vhost, so a queue the site does not know and `check`
has not seen yet is still found. The machine's own RabbitMQ runs no management plugin
(and is not changed here): this module starts a node of its own (tests/integration/
rabbit_cluster.py's layout, one node only) with the plugin on 127.0.0.1:15672, and skips
if that port is taken.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crate_deploy.inspect.probe import control_app
from crate_deploy.inspect.stranded import (
    MANAGEMENT_PORT,
    StrandedQueue,
    management_queues,
    stranded_queues,
)
from crate_deploy.site.model import Site
from tests.integration.conftest import Launch, make_demo_site, run_crate_deploy, send_from_demoapp
from tests.integration.rabbit_cluster import Node, RabbitCluster, cluster_problem

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def managed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RabbitCluster,
                                                                              Node]]:
    if problem := cluster_problem():
        pytest.skip(problem)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", MANAGEMENT_PORT)) == 0:
            pytest.skip(f"127.0.0.1:{MANAGEMENT_PORT} is taken: the management API needs it")
    cluster = RabbitCluster.create(tmp_path_factory.mktemp("rabbit-management"))
    node = cluster.nodes[0]
    (node.base / "enabled_plugins").write_text("[rabbitmq_management].\n", encoding="utf-8")
    with (node.base / "rabbitmq.conf").open("a", encoding="utf-8") as conf:
        conf.write(f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {MANAGEMENT_PORT}\n")
    try:
        cluster.start_node(node)
        cluster.wait_booted(node)
        yield cluster, node
    finally:
        cluster.teardown()


@pytest.fixture
def node_vhost(managed_node: tuple[RabbitCluster, Node]) -> str:
    cluster, _ = managed_node
    name = f"cd-mgmt-{uuid.uuid4().hex[:12]}"
    cluster.add_vhost(name)
    return name


def test_the_api_lists_every_queue_of_the_vhost(managed_node: tuple[RabbitCluster, Node],
                                                node_vhost: str) -> None:
    _, node = managed_node
    _leave_one_message(node.url(node_vhost), "unknown-to-everyone")
    listed = management_queues(node.url(node_vhost), timeout=5.0)
    assert listed is not None, "the management API did not answer"
    assert "unknown-to-everyone" in [name for name, _, _ in listed]
    assert management_queues(node.url(node_vhost, password="wrong"), timeout=5.0) is None


def test_a_message_the_api_has_not_counted_yet_is_still_stranded(
        managed_node: tuple[RabbitCluster, Node], node_vhost: str) -> None:
    """The API's counts are statistics emitted every 5 s: right after a publish it says 0
    ready. status counts each queue it names by a passive declare instead."""
    _, node = managed_node
    _leave_one_message(node.url(node_vhost), "just-now")
    app = control_app([node.url(node_vhost)], timeout=3.0)
    try:
        stranded, source = stranded_queues(app, _site_without_queues(), [node.url(node_vhost)],
                                           [], timeout=5.0)
    finally:
        app.close()
    assert "management API" in source
    assert StrandedQueue("just-now", 1) in stranded


def test_status_finds_work_on_a_queue_nobody_named(managed_node: tuple[RabbitCluster, Node],
                                                   node_vhost: str, latest_venv: Path,
                                                   tmp_path: Path) -> None:
    """demoapp sends to its own `not-the-rendered-queue`; no `check` has run, so only the
    management API can know the name: status exits 1 naming it, while every pool is up."""
    _, node = managed_node
    site = make_demo_site(tmp_path, node_vhost, latest_venv, broker_host=node.address)
    with Launch(site):
        send_from_demoapp(site)
        report = run_crate_deploy("status", str(site.out))
        assert report.returncode == 1, report.stdout + report.stderr
        assert "STRANDED not-the-rendered-queue: 1 message(s)" in report.stdout, report.stdout
        answer = json.loads(run_crate_deploy("status", "--json", str(site.out)).stdout)
    assert "management API" in json.dumps(answer["stranded"])
    assert all(pool["up"] for pool in answer["pools"]), answer["pools"]



def _leave_one_message(url: str, queue: str) -> None:
    """Declare a durable queue and put one message in it, with no consumer."""
    from kombu import Connection, Queue

    with Connection(url) as connection:
        producer = connection.Producer()
        producer.publish({"x": 1}, routing_key=queue, declare=[Queue(queue, durable=True)],
                         retry=True)


def _site_without_queues() -> Site:
    """A site whose own queue is not the one under test (the API must name it)."""
    return Site.model_validate({"project": "demo", "app": "demo.app",
                                "celery": "/usr/bin/celery",
                                "broker": {"urls": ["amqp://127.0.0.1:5672//"]},
                                "workers": [{"name": "default", "queues": ["other"]}]})
