"""Readiness pings a pool only once it consumes its control queue: a ping broadcast
before a starting worker binds that queue never reaches it.

A real worker of each cached Celery (5.2.7 declares its control queue plainly, 5.6 and
later exclusive to the connection that consumes it), started by hand in a vhost of the
test's own: before it starts the queue is not there, once it is bound a single ping
reaches it, and after the worker stopped the queue is gone again.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from crate_deploy.inspect import probe
from tests.integration.conftest import DemoSite, make_demo_site, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path: Path, vhost: str, app_venv: Path) -> DemoSite:
    return make_demo_site(tmp_path, vhost, app_venv)


@pytest.fixture
def control(site: DemoSite) -> Iterator[object]:
    app = probe.control_app([site.broker_url], timeout=3.0)
    yield app
    app.close()


def _start_worker(site: DemoSite, node: str) -> subprocess.Popen[bytes]:
    env = {key: os.environ[key] for key in ("PATH", "LANG", "HOME") if key in os.environ}
    return subprocess.Popen(
        [str(site.venv / "bin" / "celery"), "-A", "demoapp", "-b", site.broker_url,
         "worker", "-Q", "demo-quick", f"--hostname={node}", "--concurrency=1",
         "--without-mingle", "--without-gossip", "--loglevel=WARNING"],
        cwd=site.site_dir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)


def test_a_pool_is_pinged_once_its_control_queue_is_bound(site: DemoSite,
                                                         control: object) -> None:
    node = f"readiness-{site.vhost[-8:]}@localhost"
    assert probe.listening_for_control(control, [node])[node] is False
    worker = _start_worker(site, node)
    try:
        wait_for(lambda: probe.listening_for_control(control, [node])[node], 60, 0.05,
                 what="the worker to consume its control queue")
        # Bound: one ping reaches it (a generous timeout; `limit` ends the wait at the reply).
        replies = control.control.ping(  # type: ignore[attr-defined]
            destination=[node], timeout=10.0, limit=1)
        assert [list(reply) for reply in replies] == [[node]]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    wait_for(lambda: probe.listening_for_control(control, [node])[node] is False, 30, 0.2,
             what="the control queue to go with its worker")

