"""A worker of a cluster site reconnects, rather than dies, when a queue it declares is
still locked by a connection that is going away (docs/reliability.md, "Bugs found").

In a rolling restart a 5.7.0 worker reconnected to the next node 13 ms after its node's
`stop_app` and declared its exclusive control queue (`NODE.celery.pidbox`) while the
stopping node still held the old connection's copy: 405 RESOURCE_LOCKED, which Celery
takes for an unrecoverable error, so the worker exited and the supervisor restarted it.
Here the same lock is held on purpose, on the machine's own broker (two URLs naming it,
a cluster site to the entry module), while the fleet starts, and let go 4 s later.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.integration.conftest import Launch, fresh_vhost, node, venv_or_skip
from tests.integration.fault_support import POOL, fault_site
from tests.rabbit import BROKER

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("venv_key", ["celery52", "celery57"])
def test_a_locked_control_queue_makes_the_worker_reconnect_not_exit(
        tmp_path: Path, venv_key: str) -> None:
    from kombu.connection import Connection

    venv = venv_or_skip(venv_key)
    with fresh_vhost() as vhost:
        urls = [f"amqp://guest:${{BROKER_PASSWORD}}@{host}/{vhost}"
                for host in (BROKER, BROKER.replace("127.0.0.1", "localhost"))]
        site = fault_site(tmp_path, vhost, venv, concurrency=1,
                          overrides={"broker": {"urls": urls}})
        holder = Connection(site.broker_url)
        holder.default_channel.queue_declare(f"{node(POOL)}.celery.pidbox", exclusive=True,
                                             auto_delete=True)
        release = threading.Timer(4.0, holder.release)
        release.start()
        try:
            with Launch(site) as launch:
                log = launch.log()
        finally:
            release.cancel()
            holder.release()
    assert "RESOURCE_LOCKED" in log, log[-3000:]  # the lock was met
    assert "restarting in" not in log, log[-3000:]  # and the worker did not exit on it
    assert "Unrecoverable error" not in log, log[-3000:]
