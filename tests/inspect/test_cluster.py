"""inspect/cluster.py: which broker nodes are down, and whether status may still pass."""

from __future__ import annotations

import socket

from crate_deploy.inspect.cluster import BrokerNode, address, broker_nodes, down_verdict
from crate_deploy.inspect.status import _text
from crate_deploy.secrets import Masker


def test_address_names_the_port_a_worker_reports() -> None:
    assert address("amqp://u:p@127.0.0.1:25672/v") == "127.0.0.1:25672"
    assert address("amqp://u:p@rabbit2.internal/v") == "rabbit2.internal:5672"
    assert address("amqps://rabbit3/v") == "rabbit3:5671"


def _nodes(*up: bool) -> list[BrokerNode]:
    return [BrokerNode(f"amqp://n{i}", f"127.0.0.1:{5000 + i}", ok, None if ok else "refused")
            for i, ok in enumerate(up)]


def test_no_node_down_is_no_news() -> None:
    assert down_verdict(_nodes(True, True, True), 0) == (False, [])


def test_a_node_down_fails_status_unless_tolerated() -> None:
    fails, warnings = down_verdict(_nodes(True, False, True), 0)
    assert fails and warnings == ["broker node(s) down: 127.0.0.1:5001 (1 of 3; the site "
                                  "tolerates 0: broker.tolerate_down)"]
    fails, warnings = down_verdict(_nodes(True, False, True), 1)
    assert not fails and "127.0.0.1:5001" in warnings[0]
    fails, _ = down_verdict(_nodes(False, False, True), 1)
    assert fails


def test_every_url_is_asked_on_its_own() -> None:
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        ports = [listening.getsockname()[1], closed.getsockname()[1]]
        nodes = broker_nodes([f"amqp://u:secret@127.0.0.1:{port}//" for port in ports],
                             Masker(["secret"]), timeout=1.0)
    assert [node.address for node in nodes] == [f"127.0.0.1:{port}" for port in ports]
    assert not nodes[1].up and nodes[1].error
    assert all("secret" not in node.url + (node.error or "") for node in nodes)


def test_status_text_shows_nodes_warnings_and_each_pool_s_broker() -> None:
    report = {
        "project": "p", "up": True, "warnings": ["broker node(s) down: 127.0.0.1:5001 ..."],
        "broker": {"reachable": True, "urls": ["amqp://a", "amqp://b"], "nodes": [
            {"url": "amqp://a", "address": "127.0.0.1:5000", "up": True, "error": None},
            {"url": "amqp://b", "address": "127.0.0.1:5001", "up": False, "error": "refused"}]},
        "pools": [{"name": "w", "up": True, "answering": True, "node": "w@h", "queues": ["q"],
                   "expected": ["q"], "broker": "127.0.0.1:5000"}],
        "queues": [], "flower": None, "processes": {},
    }
    lines = _text(report).splitlines()
    assert "node    127.0.0.1:5000  up" in lines  # the columns line up with the rest
    assert "node    127.0.0.1:5001  DOWN  refused" in lines
    assert "warning: broker node(s) down: 127.0.0.1:5001 ..." in lines
    assert any(line.startswith("pool    w") and "w@h on 127.0.0.1:5000" in line
               for line in lines)
