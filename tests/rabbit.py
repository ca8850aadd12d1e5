"""RabbitMQ helpers for tests: a fresh vhost per test, so leftovers of an earlier run
(the broker outlives every test process) can never steal or poison its messages."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

BROKER = "127.0.0.1:5672"


def rabbitmqctl(*args: str, patience: float = 0.0) -> None:
    """Run rabbitmqctl; retry for `patience` seconds while the broker app is stopped
    (a fault test may be simulating an outage with stop_app)."""
    deadline = time.monotonic() + patience
    while True:
        result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                                timeout=60, check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {result.stderr or result.stdout}")
        time.sleep(1)


def broker_problem() -> str | None:
    """Why tests that need RabbitMQ cannot run here, or None."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed"
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        return f"no RabbitMQ on {BROKER} ({exc})"
    return None


@contextmanager
def temporary_vhost(prefix: str = "cd-test") -> Iterator[str]:
    """A new vhost that guest may use; deleted (with its queues) afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name, patience=60)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*", patience=60)
        yield name
    finally:
        rabbitmqctl("delete_vhost", name, patience=120)


def amqp_url(vhost: str, password: str = "guest") -> str:
    return f"amqp://guest:{password}@{BROKER}/{quote(vhost, safe='')}"


@contextmanager
def temporary_user(vhost: str, password: str) -> Iterator[str]:
    """A broker user of its own (guest's password is well known, so a leak of it would go
    unnoticed) with every permission on vhost; deleted afterwards."""
    name = f"cd-user-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_user", name, password, patience=60)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, name, ".*", ".*", ".*", patience=60)
        yield name
    finally:
        rabbitmqctl("delete_user", name, patience=120)
