"""A launch leaves nothing behind in the broker, and Flower lists the workers at "ready".

Before: beat sent its periodic tasks with the rpc:// backend's reply queue declared (a
uuid-named queue, kept for results.expires: a day), and the workers' results piled up
there, unread, long after the launch had stopped. And Flower, started before the
workers, answered /api/workers with {} until something asked it to refresh.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from tests.integration.conftest import Launch, fresh_vhost, make_demo_site, node, wait_for

pytestmark = pytest.mark.slow


def _queues(vhost: str) -> dict[str, int]:
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name",
                             "messages"], capture_output=True, text=True, timeout=60, check=True)
    rows = [line.split("\t") for line in listed.stdout.splitlines()[1:] if "\t" in line]
    return {name: int(messages) for name, messages in rows}


def _flower_workers(site: object, port: int, user: str, password: str) -> dict[str, object]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers")  # no refresh
    token = b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        listed = json.loads(response.read())
    assert isinstance(listed, dict)
    return listed


def test_launch_leaves_no_queue_with_messages_and_flower_lists_workers_when_ready(
        app_venv: Path, tmp_path: Path) -> None:
    with fresh_vhost() as vhost:
        site = make_demo_site(tmp_path, vhost, app_venv, {
            "beat": {"schedule": [{"name": "tick", "task": "demoapp.tick", "every": 1}]}})
        with Launch(site) as launch:
            listed = _flower_workers(site, site.flower_port, site.flower_user,
                                     site.flower_password)
            assert {node("quick"), node("slow")} <= set(listed), listed
            wait_for(lambda: launch.log().count("demoapp.tick[") >= 8, 120,
                     what="beat's ticks to run", describe=launch.tail)
        left = {name: count for name, count in _queues(vhost).items() if count}
        assert left == {}, f"queues still holding messages after the launch stopped: {left}"
