"""stranded.py: which queues count as work, and the management API's answer read right."""

from __future__ import annotations

import json
import threading
from base64 import b64encode
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from crate_deploy.inspect.stranded import is_work_queue, management_queues
from tests.conftest import MINIMAL, Result


def test_celerys_own_queues_and_parked_dead_letters_are_not_work() -> None:
    assert is_work_queue("celery") and is_work_queue("demo-quick")
    for name in ("quick@vm.celery.pidbox", "celeryev.4df894b3-2e50-4cda-b7fb-a90aad822e40",
                 "3e07d94f-6228-3702-aa39-0b0d5ed3f73b", "mail.dead", "amq.gen-abc"):
        assert not is_work_queue(name), name


class _Api(BaseHTTPRequestHandler):
    """What RabbitMQ's management API answers for GET /api/queues/VHOST (loopback stub)."""

    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        token = b64encode(b"crate:p@ss/word").decode()
        if self.headers.get("Authorization") != f"Basic {token}":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps([{"name": "celery", "messages_ready": 3, "consumers": 0},
                           {"name": "consent", "messages_ready": 0, "consumers": 2}]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_management_api_is_asked_with_the_brokers_credentials_and_vhost(api: int) -> None:
    url = "amqp://crate:p%40ss%2Fword@127.0.0.1:5672/crate%2Fprod"
    assert management_queues(url, 2.0, port=api) == [("celery", 3, 0), ("consent", 0, 2)]
    assert _Api.seen[-1].startswith("/api/queues/crate%2Fprod?")
    assert management_queues("amqp://crate:wrong@127.0.0.1/crate", 2.0, port=api) is None


def test_no_management_api_means_none(api: int) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert management_queues("amqp://guest:guest@127.0.0.1//", 1.0, port=closed) is None


def test_requeue_stranded_refuses_a_queue_a_pool_consumes_and_mixed_forms(
        tmp_path: Path, run_cli: Callable[..., Result], write_site: Callable[..., Path]) -> None:
    site = write_site(MINIMAL)
    assert run_cli("render", site, "-o", tmp_path / "out").code == 0
    consumed = run_cli("requeue", "--stranded", "celery", "-C", tmp_path / "out")
    assert consumed.code == 2
    assert "a pool of this site consumes 'celery': its tasks are not stranded" in consumed.err
    mixed = run_cli("requeue", "celery", "--stranded", "other", "-C", tmp_path / "out")
    assert mixed.code == 2
    assert "--stranded takes no QUEUES or --to: the site's routes decide" in mixed.err
