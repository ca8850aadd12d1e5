"""`delivery: fast` against `reliable`, on real fleets (Celery 5.2.7 and the newest): the
callers get their results either way; under fast the pool processes publish results on
channels the broker has not put in confirm mode, while the tasks they send still go out
on confirmed ones, and no "Task ... received / succeeded" line is logged.

What the broker says is the observation: `rabbitmqctl list_channels` gives each channel's
confirm mode and connection; `list_connections` the client's port, which /proc maps to
the pool process that holds the socket. The quick pool runs one process, so what it
publishes can be told apart in time: first a task that only sends a task (no result),
then tasks with results.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    DemoSite,
    Launch,
    descendants,
    fresh_vhost,
    make_demo_site,
    node,
    task_client,
    wait_for,
)

pytestmark = pytest.mark.slow

PROBE_APP = '''\
"""The demo app, plus a task that sends a task (written by the test)."""
from demoapp import app


@app.task(name="probeapp.send_one")
def send_one():
    app.send_task("demoapp.quick", kwargs={"value": -1}, queue="demo-slow",
                  ignore_result=True)
'''


@pytest.fixture(params=["fast", "reliable"])
def fleet(request: pytest.FixtureRequest, app_venv: Path, tmp_path: Path
          ) -> Iterator[tuple[DemoSite, Launch]]:
    with fresh_vhost() as vhost:
        site = make_demo_site(tmp_path, vhost, app_venv, {
            "app": "probeapp", "delivery": request.param,
            "workers": {"quick": {"concurrency": 1}}})
        (site.site_dir / "probeapp.py").write_text(PROBE_APP)
        with Launch(site) as launch:
            yield site, launch


def _rabbitmqctl_rows(*args: str) -> list[list[str]]:
    result = subprocess.run(["rabbitmqctl", "-q", "--no-table-headers", *args],
                            capture_output=True, text=True, timeout=60, check=True)
    return [line.split("\t") for line in result.stdout.splitlines() if line.strip()]


def _local_ports(pids: list[int]) -> set[int]:
    """The local TCP ports of the sockets these processes hold (IPv4, from /proc)."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _pool_channels(site: DemoSite, pids: list[int]) -> dict[str, list[bool]]:
    """The confirm mode of each channel of each broker connection of these processes, in
    the site's vhost: {connection pid: [confirm, ...]}."""
    ports = _local_ports(pids)
    connections = {pid for pid, vhost, port in _rabbitmqctl_rows(
        "list_connections", "pid", "vhost", "peer_port")
        if vhost == site.vhost and int(port) in ports}
    channels: dict[str, list[bool]] = {connection: [] for connection in connections}
    for connection, confirm in _rabbitmqctl_rows("list_channels", "connection", "confirm"):
        if connection in channels:
            channels[connection].append(confirm == "true")
    return channels


def test_results_skip_confirm_waits_only_under_fast(fleet: tuple[DemoSite, Launch]) -> None:
    site, launch = fleet
    fast = site.site["delivery"] == "fast"
    pool_processes = descendants(launch.pids()["demo-worker-quick"])
    assert len(pool_processes) == 1, pool_processes

    with task_client(site) as client:
        client.app.send_task("probeapp.send_one", queue="demo-quick", ignore_result=True)
        # The task publish from the pool process: one connection, its channel confirmed.
        wait_for(lambda: all((found := _pool_channels(site, pool_processes)).values())
                 and found, 60, what="the pool process to send its task")
        tasks_only = _pool_channels(site, pool_processes)
        sent = client.send_many("demoapp.quick", "demo-quick",
                                [{"value": i} for i in range(20)])
        values = client.gather(sent, 60)
    assert [value["value"] for value in values] == list(range(20))
    assert [confirms for confirms in tasks_only.values()] == [[True]], tasks_only

    with_results = _pool_channels(site, pool_processes)
    results_only = {connection: confirms for connection, confirms in with_results.items()
                    if connection not in tasks_only}
    if fast:  # results went out on a connection of their own, never in confirm mode
        assert list(results_only.values()) == [[False]], with_results
    else:  # the same confirmed channel as the task publish
        assert with_results == tasks_only, with_results
    assert with_results.keys() >= tasks_only.keys(), with_results

    log = launch.log()
    assert f"{node('quick')} ready" in log, launch.tail()  # lifecycle lines stay
    per_task_lines = [line for line in log.splitlines()
                      if "demoapp.quick[" in line and ("received" in line or "succeeded" in line)]
    assert bool(per_task_lines) is not fast, per_task_lines[:4] or launch.tail()
