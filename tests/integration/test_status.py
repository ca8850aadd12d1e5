"""`crate-deploy status` against a launched demo fleet, and status/launch without a broker."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    QUEUES,
    DemoSite,
    Launch,
    TaskClient,
    make_demo_site,
    node,
    run_crate_deploy,
    task_client,
    wait_for,
)

pytestmark = pytest.mark.slow


def _status(site: DemoSite) -> tuple[int, dict[str, Any]]:
    result = run_crate_deploy("status", str(site.out), "--json", timeout=60)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def _queue(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(queue for queue in report["queues"] if queue["name"] == name)


def _ready(client: TaskClient, queue: str) -> int:
    with client.app.connection_for_write() as connection:
        _, ready, _ = connection.default_channel.queue_declare(queue=queue, passive=True)
        return int(ready)


def _purge(client: TaskClient, queue: str) -> int:
    with client.app.connection_for_write() as connection:
        return int(connection.default_channel.queue_purge(queue) or 0)


def test_status_reports_depths_and_sees_a_killed_worker_come_back(demo_site: Any) -> None:
    site: DemoSite = demo_site()
    sent = 6
    with task_client(site) as client, Launch(site) as launch:
        # Long tasks on the slow pool (concurrency 2, prefetch 1): 2 held, 4 ready.
        client.send_many("demoapp.slow", QUEUES["slow"],
                         [{"seconds": 60, "value": i} for i in range(sent)])
        wait_for(lambda: len(client.active(QUEUES["slow"])) == 2, 30, what="two running tasks")

        text = run_crate_deploy("status", str(site.out), timeout=60)
        assert text.returncode == 0, text.stdout + text.stderr
        assert "demo: all up" in text.stdout
        rows = {m["name"]: (int(m["ready"]), int(m["unacked"]), int(m["consumers"]))
                for m in re.finditer(r"^(?P<name>demo-\w+)\s+(?P<ready>\d+)\s+"
                                     r"(?P<unacked>\d+)\s+(?P<consumers>\d+)\s*$",
                                     text.stdout, re.MULTILINE)}
        assert rows == {QUEUES["slow"]: (sent - 2, 2, 1), QUEUES["quick"]: (0, 0, 1)}, text.stdout
        assert site.flower_password not in text.stdout

        code, report = _status(site)
        assert code == 0 and report["up"] is True, report
        slow = _queue(report, QUEUES["slow"])
        assert (slow["ready"], slow["unacked"], slow["consumers"]) == (sent - 2, 2, 1)
        assert {pool["name"]: pool["up"] for pool in report["pools"]} == {"quick": True,
                                                                           "slow": True}
        assert report["flower"]["up"] is True
        assert report["beat"] == {"up": True}
        pids = launch.pids()
        processes = report["processes"]
        assert {name: (process["state"], process["pid"]) for name, process in
                processes.items()} == {name: ("running", pid) for name, pid in pids.items()}
        for process in processes.values():  # an ISO 8601 time, since this launch began
            started = datetime.fromisoformat(process["since"])
            assert timedelta(0) <= datetime.now(timezone.utc) - started < timedelta(hours=1)

        # SIGKILL the slow worker's main process: its tasks go back to the queue, the
        # launch restarts it (Restart=on-failure, RestartSec=5s), status sees it back.
        old = pids["demo-worker-slow"]
        os.kill(old, signal.SIGKILL)
        # The 2 held tasks go back to the queue at once: nothing is lost. Drop them all
        # before the restart (5 s), so the new worker has nothing to run and stops at once.
        wait_for(lambda: _ready(client, QUEUES["slow"]) == sent, 4, interval=0.05,
                 what="the killed worker's tasks to be requeued")
        assert _purge(client, QUEUES["slow"]) == sent
        code, report = _status(site)
        if launch.pids()["demo-worker-slow"] == old:  # status ran before the restart
            assert code == 1 and report["up"] is False
            assert not next(p for p in report["pools"] if p["name"] == "slow")["answering"]
            assert report["processes"]["demo-worker-slow"] == {"state": "stopped", "pid": old,
                                                               "since": None}
            assert _queue(report, QUEUES["slow"])["consumers"] == 0

        def back() -> dict[str, Any] | None:
            code, report = _status(site)
            return report if code == 0 else None

        report = wait_for(back, 30, interval=0.5, what="status to show the worker back")
        new = launch.pids()["demo-worker-slow"]
        assert new != old
        slow = report["processes"]["demo-worker-slow"]
        assert (slow["state"], slow["pid"]) == ("running", new)
        assert next(p for p in report["pools"] if p["name"] == "slow")["node"] == node("slow")
        assert "demo-worker-slow was killed by SIGKILL; restarting in 5.0s" in launch.log()


@pytest.mark.parametrize("command", ["status", "status --json", "launch"])
def test_unreachable_broker_fails_fast_and_masks_the_password(
        tmp_path: Path, latest_venv: Path, command: str) -> None:
    password = "brokerpw-7f3a9c21"  # never valid anywhere: port 1 has no broker
    site = make_demo_site(tmp_path, "cd-test-unreachable", latest_venv,
                          broker_host="127.0.0.1:1", broker_password=password)
    started = time.monotonic()
    result = run_crate_deploy(*command.split(), str(site.out), timeout=30)
    took = time.monotonic() - started
    output = result.stdout + result.stderr

    assert result.returncode == 1, output
    assert took < 10, f"{command} took {took:.1f}s"
    assert "Traceback" not in output
    assert password not in output and site.flower_password not in output
    assert "amqp://guest:****@127.0.0.1:1/cd-test-unreachable" in output, output
    assert "unreachable" in output
    if command == "status --json":
        report = json.loads(result.stdout)
        assert report["up"] is False and report["broker"]["reachable"] is False
    if command == "launch":
        assert "crate-deploy: error:" in result.stderr
        assert not site.state_file.exists()


def test_work_waiting_for_a_pool_that_is_down_is_not_called_stranded(
        tmp_path: Path, vhost: str, latest_venv: Path) -> None:
    """A site queue whose pool is down holds work that will flow once the pool is back:
    status says the pool is down, not that the queue is stranded (requeue --stranded
    refuses it). A site queue no pool consumes is stranded."""
    import kombu

    queues = [{"name": QUEUES["quick"]}, {"name": QUEUES["slow"]}, {"name": "orphan"}]
    site = make_demo_site(tmp_path, vhost, latest_venv, {"queues": queues})
    with task_client(site) as client:
        client.send_many("demoapp.quick", QUEUES["quick"], [{"value": n} for n in range(3)])
    with kombu.Connection(site.broker_url) as connection:
        orphan = connection.SimpleQueue("orphan")
        orphan.put({"n": 1})
        orphan.close()
    result = run_crate_deploy("status", str(site.out), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^pool +quick +DOWN", result.stdout, re.MULTILINE), result.stdout
    assert f"STRANDED {QUEUES['quick']}" not in result.stdout, result.stdout
    assert ("STRANDED orphan: 1 message(s) and no consumer: no pool of this site consumes it "
            "(`crate-deploy check` names the tasks sent there; "
            "`crate-deploy requeue --stranded orphan` moves them)") in result.stdout
