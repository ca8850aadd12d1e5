"""Task events: Flower sees every task of a launched fleet, and the worker sends those
events without waiting for a publisher confirm while results and tasks sent from a task
still wait for theirs (issue 12: the confirm waits on events halved a pool's throughput).

The application is the demo's, wrapped in a module of the test's own that records what
the worker's main process and a pool process actually publish with: the py-amqp
connection's `confirm_publish`, which makes every publish on it wait for the broker.
On Celery 5.2.7 and the newest.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    DemoSite,
    Launch,
    fresh_vhost,
    make_demo_site,
    node,
    task_client,
    wait_for,
)

pytestmark = pytest.mark.slow

PROBE_APP = '''\
"""The demo app, plus a record of how the worker publishes (written by the test)."""
import json
from pathlib import Path

from celery import signals

from demoapp import app

HERE = Path(__file__).resolve().parent


@signals.worker_ready.connect
def _record_events_connection(sender, **_):
    events = sender.event_dispatcher.connection  # the kombu connection events go out on
    (HERE / f"events-{sender.hostname}.json").write_text(json.dumps({
        "events_wait_for_confirms": bool(events.connection.confirm_publish),
    }))


@app.task(name="probeapp.publish_modes")
def publish_modes():
    """From a pool process: does the connection its results (and the tasks it sends)
    go out on wait for confirms?"""
    with app.producer_or_acquire() as producer:
        producer.channel  # connects
        return bool(producer.connection.connection.confirm_publish)
'''


@pytest.fixture(params=[{}, {"workers": {"quick": {"task_events": False}}}],
                ids=["events", "quick-pool-without-events"])
def fleet(request: pytest.FixtureRequest, app_venv: Path, tmp_path: Path
          ) -> Iterator[tuple[DemoSite, Launch]]:
    with fresh_vhost() as vhost:
        site = make_demo_site(tmp_path, vhost, app_venv, {"app": "probeapp", **request.param})
        (site.site_dir / "probeapp.py").write_text(PROBE_APP)
        with Launch(site) as launch:
            yield site, launch


def _flower_tasks(site: DemoSite) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{site.flower_port}/api/tasks")
    token = base64.b64encode(f"{site.flower_user}:{site.flower_password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        tasks: dict[str, Any] = json.loads(response.read())
    return tasks


def test_flower_sees_every_task_and_only_events_skip_the_confirm_wait(
        fleet: tuple[DemoSite, Launch]) -> None:
    """With `task_events: false` on the quick pool, Flower still sees the slow pool's
    tasks, and none of the quick pool's."""
    site, launch = fleet
    quick_events = site.site["workers"][0].get("task_events", True)
    if not quick_events:  # let Flower's enable_events timer (every 5 s) fire twice first
        time.sleep(11)
    with task_client(site) as client:
        sent = client.send_many("demoapp.quick", "demo-quick", [{"value": i} for i in range(20)])
        slow = client.send("demoapp.slow", "demo-slow", seconds=0.1, value=20)
        probe = client.send("probeapp.publish_modes", "demo-quick")
        # One wait for all: waiting for the slow task's result alone, after the others,
        # timed out in 2 of 3 runs against 5.2.7 pools (not investigated further).
        *values, child_confirms = client.gather([*sent, slow, probe], 60)
    assert [value["value"] for value in values] == list(range(21))
    ids = {result.id for result in sent}
    expected = (ids if quick_events else set()) | {slow.id}

    def all_succeeded() -> bool:
        tasks = _flower_tasks(site)
        return all(tasks.get(task_id, {}).get("state") == "SUCCESS" for task_id in expected)

    wait_for(all_succeeded, 60, 0.5, what="Flower to show every task succeeded")
    tasks = _flower_tasks(site)
    for task_id in expected:  # received, started and succeeded all reached Flower
        seen = tasks[task_id]
        assert seen["received"] and seen["started"] and seen["succeeded"], seen
        assert seen["worker"] == node("quick" if task_id in ids else "slow"), seen
    if not quick_events:
        assert ids.isdisjoint(tasks), "Flower saw tasks of a pool with task_events: false"
        assert "enabled by remote" not in launch.log(), launch.tail()

    facts = json.loads((site.site_dir / f"events-{node('slow')}.json").read_text())
    assert facts["events_wait_for_confirms"] is False, facts
    assert child_confirms is True  # results and tasks sent from a task: confirmed
