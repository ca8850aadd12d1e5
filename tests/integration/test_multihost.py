"""One site, two hosts: each host a UTS namespace of its own (its own host name, this
machine's network, so both reach the shared RabbitMQ on 127.0.0.1), each running a
foreground `crate-deploy launch` of its own share, rendered by `render --all-hosts`.

Host 1 runs pool quick, beat and Flower; host 2 runs quick and slow. Shown:
1. each launch waits for its own share only; `status` (from host 1) sees every node of
   both hosts over the broker;
2. tasks the site routes to demo-slow, consumed only on host 2, run there (each result
   names the node and the machine's host name, read by the task itself);
3. host 2 stopped: `status` exits 1 naming host 2 and its pool; tasks sent to demo-slow
   meanwhile wait in the queue (counted), and all of them run on host 2 when it comes
   back: none lost;
4. every process, and so every namespace, is gone at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import (
    CRATE_DEPLOY,
    DemoSite,
    Launch,
    make_client,
    make_demo_site,
    run_crate_deploy,
    wait_for,
)

pytestmark = pytest.mark.slow

READY = 180.0  # the machine is shared: give readiness a generous wait
PARKED = 10  # slow tasks sent while host 2 is down


def in_uts(host: str, argv: list[str]) -> list[str]:
    """argv run in a new UTS namespace whose host name is `host` (network shared)."""
    return ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', host, *argv]


class HostLaunch(Launch):
    """A foreground launch of one host's share, in that host's namespace."""

    def __init__(self, site: DemoSite, host: str, log: Path) -> None:
        super().__init__(replace(site, out=site.out / "hosts" / host), timeout=READY,
                         ready_within=READY + 30, stop_within=120, log=log)
        self.host = host

    def argv(self) -> list[str]:
        return in_uts(self.host, super().argv())

    def uts_namespace(self) -> str:
        return os.readlink(f"/proc/{self.launcher_pid}/ns/uts")


def status(site: DemoSite, host: str) -> tuple[int, dict[str, Any], str]:
    """`crate-deploy status` of host's share, run on that host: (exit, JSON report, text)."""
    share = str(site.out / "hosts" / host)
    as_json = subprocess.run(in_uts(host, [str(CRATE_DEPLOY), "status", share, "--json"]),
                             capture_output=True, text=True, timeout=120, check=False)
    text = subprocess.run(in_uts(host, [str(CRATE_DEPLOY), "status", share]),
                          capture_output=True, text=True, timeout=120, check=False)
    assert as_json.returncode == text.returncode, (as_json.stdout, text.stdout)
    return text.returncode, json.loads(as_json.stdout), text.stdout


def namespaces_left(namespaces: set[str]) -> list[int]:
    """Processes still in any of these UTS namespaces (a namespace lives as long as one)."""
    left = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and os.readlink(entry / "ns" / "uts") in namespaces:
                left.append(int(entry.name))
    return left


@contextlib.contextmanager
def routed_client(site: DemoSite) -> Iterator[Any]:
    """The test's Celery client, routing tasks by the site's own routes."""
    app = make_client(site.broker_url)
    app.conf.task_routes = {pattern: {"queue": queue}
                            for pattern, queue in site.site["routes"].items()}
    app.conf.task_default_queue = site.site["default_queue"]
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def two_hosts(tmp_path: Path, vhost: str, app_venv: Path) -> tuple[DemoSite, str, str]:
    suffix = uuid.uuid4().hex[:6]
    one, two = f"cd-h1-{suffix}", f"cd-h2-{suffix}"
    site = make_demo_site(tmp_path, vhost, app_venv)
    site.site["hosts"] = [{"name": one, "pools": ["quick"], "beat": True, "flower": True},
                          {"name": two, "pools": ["quick", "slow"]}]
    site.site_file.write_text(yaml.safe_dump(site.site, sort_keys=False), encoding="utf-8")
    result = run_crate_deploy("render", str(site.site_file), "-o", str(site.out), "--all-hosts",
                              timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return site, one, two


def test_two_hosts_share_one_site(two_hosts: tuple[DemoSite, str, str], tmp_path: Path) -> None:
    site, one, two = two_hosts
    namespaces: set[str] = set()
    launches: list[HostLaunch] = []
    try:
        first = HostLaunch(site, one, tmp_path / "host1.log")
        second = HostLaunch(site, two, tmp_path / "host2.log")
        launches += [first, second]
        for launch in (first, second):
            launch.start()
        for launch in (first, second):
            launch.wait_ready()
            namespaces.add(launch.uts_namespace())
        assert f"quick@{one}" in first.log() and f"slow@{one}" not in first.log()
        assert f"slow@{two}" in second.log() and "Flower" not in second.log().split("ready in")[1]

        code, report, text = status(site, one)
        print(f"status, both hosts up (exit {code}):\n{text}")  # shown with pytest -s
        assert code == 0, text
        assert {pool["node"]: pool["up"] for pool in report["pools"]} == {
            f"quick@{one}": True, f"quick@{two}": True, f"slow@{two}": True}
        assert [(host["name"], host["up"]) for host in report["hosts"]] == [(one, True),
                                                                            (two, True)]
        assert "beat up, Flower up" in next(line for line in text.splitlines()
                                            if line.startswith("host") and one in line)

        with routed_client(site) as app:
            slow = [app.send_task("demoapp.slow", kwargs={"seconds": 0.2, "value": n})
                    for n in range(6)]
            quick = [app.send_task("demoapp.quick", kwargs={"value": n}) for n in range(20)]
            ran_slow = [result.get(timeout=120) for result in slow]
            ran_quick = [result.get(timeout=120) for result in quick]
        # demo-slow is consumed on host 2 only: every slow task ran there.
        assert {(r["node"], r["host"]) for r in ran_slow} == {(f"slow@{two}", two)}
        # quick runs on both hosts; each node is on the host its name says.
        assert all(r["node"] == f"quick@{r['host']}" for r in ran_quick), ran_quick
        assert {r["host"] for r in ran_quick} <= {one, two}

        second.stop()
        code, report, text = status(site, one)
        print(f"status, host 2 stopped (exit {code}):\n{text}")
        assert code == 1, text
        down = [line for line in text.splitlines() if line.startswith("host") and "DOWN" in line]
        assert len(down) == 1 and two in down[0] and "pool slow DOWN" in down[0], text
        assert [host["name"] for host in report["hosts"] if not host["up"]] == [two]

        with routed_client(site) as app:
            parked = [app.send_task("demoapp.slow", kwargs={"seconds": 0.1, "value": n})
                      for n in range(PARKED)]

            def parked_in_queue() -> bool:
                queues = {q["name"]: q for q in status(site, one)[1]["queues"]}
                return bool(queues["demo-slow"]["ready"] == PARKED)

            wait_for(parked_in_queue, 60, interval=1, what=f"{PARKED} tasks in demo-slow")
            third = HostLaunch(site, two, tmp_path / "host2-again.log")
            launches.append(third)
            third.start().wait_ready()
            namespaces.add(third.uts_namespace())
            ran = [result.get(timeout=180) for result in parked]
        assert sorted(r["value"] for r in ran) == list(range(PARKED))  # none lost
        assert {(r["node"], r["host"]) for r in ran} == {(f"slow@{two}", two)}
        code, report, text = status(site, one)
        assert code == 0, text
        assert {q["name"]: q["ready"] for q in report["queues"]}["demo-slow"] == 0
        for launch in (third, first):
            launch.stop()
        assert namespaces_left(namespaces) == []
    finally:
        for launch in launches:  # stops what is still running (warmly unless failing)
            launch.__exit__(*sys.exc_info())
        for pid in namespaces_left(namespaces):  # last resort: nothing may outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
