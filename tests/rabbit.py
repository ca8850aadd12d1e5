"""RabbitMQ helpers for tests: a fresh vhost per test, so leftovers of an earlier run
(the broker outlives every test process) can never steal or poison its messages."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

BROKER = "127.0.0.1:5672"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def temporary_vhost(prefix: str = "cd-test") -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


def amqp_url(vhost: str, password: str = "guest") -> str:
    return f"amqp://guest:{password}@{BROKER}/{quote(vhost, safe='')}"
