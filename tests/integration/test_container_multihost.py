"""One site on two hosts under a real systemd: two systemd-nspawn containers, each
with its own host name, each given its own share the way
docs/multi-host.md rolls it out.

1. the demo site with hosts: (host 1: pool quick, beat, Flower; host 2: quick and
   slow) is rendered with `render --all-hosts`; each share is installed with
   `launch --systemd --root STAGE` into a staging tree of its own (crate-deploy is
   not inside the containers), copied into its container, and started there with
   `systemctl start demo.target`;
2. each container runs only its share's units; every node of both hosts answers
   over the broker (quick@HOST1, quick@HOST2, slow@HOST2), and `status` of host 2's
   share, run here, is all up;
3. tasks routed to demo-slow run on host 2 (each task reports its machine's name);
4. `systemctl stop demo.target` on host 2: status exits 1 naming host 2; slow tasks
   sent meanwhile wait in demo-slow and all run once host 2's target is started again.

Needs what test_container_fleet.py needs (root, systemd-nspawn, the cached root of
.ci/container-rootfs, RabbitMQ); skips without them, fails under CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from crate_deploy.inspect import probe
from crate_deploy.state.deployment import load_deployment
from tests.integration.conftest import make_client, run_crate_deploy, wait_for
from tests.integration.test_container_fleet import (
    SECRETS_FILE,
    STAGE_IN_CONTAINER,
    TARGET,
    Fleet,
    copy_from_stage,
    in_namespace,
    queue_ready,
)
from tests.rabbit import broker_problem, temporary_vhost
from tests.systemd_container import APP_DIR, Container, container_available, skip_or_fail

pytestmark = pytest.mark.slow

PARKED = 5  # slow tasks sent while host 2 is stopped
WORKERS = ("demo-worker-quick.service", "demo-worker-slow.service")  # host 2's


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    reason = container_available() or broker_problem()
    if reason:
        skip_or_fail(reason)


def install_share(fleet: Fleet, host: str) -> tuple[Path, str]:
    """`launch --systemd --root STAGE` of one host's share: the staging tree, the output."""
    stage = fleet.tmp / f"stage-{host}"
    stage.mkdir()
    result = run_crate_deploy("launch", "--systemd", "--root", str(stage),
                              str(fleet.out / "hosts" / host), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return stage, result.stdout


def status(fleet: Fleet, host: str) -> tuple[int, str]:
    result = run_crate_deploy("status", str(fleet.out / "hosts" / host), timeout=120,
                              env={**os.environ, "BROKER_PASSWORD": "guest",
                                   "FLOWER_PASSWORD": fleet.flower_password})
    return result.returncode, result.stdout + result.stderr


def test_two_hosts_under_systemd(tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    one, two = f"cd-mh1-{suffix}", f"cd-mh2-{suffix}"
    with temporary_vhost("cd-mhost") as vhost, contextlib.ExitStack() as stack:
        fleet = Fleet(tmp_path, vhost)
        fleet.site["hosts"] = [{"name": one, "pools": ["quick"], "beat": True, "flower": True},
                               {"name": two, "pools": ["quick", "slow"]}]
        fleet.site_file.write_text(yaml.safe_dump(fleet.site, sort_keys=False))
        rendered = run_crate_deploy("render", str(fleet.site_file), "-o", str(fleet.out),
                                    "--all-hosts", timeout=120)
        assert rendered.returncode == 0, rendered.stdout + rendered.stderr
        stages = {}
        for host, units in ((one, "demo-worker-quick.service demo-beat.service "
                                  "demo-flower.service"),
                            (two, "demo-worker-quick.service demo-worker-slow.service")):
            stages[host], installed = install_share(fleet, host)
            assert f"enabled: {TARGET} {units}\n" in installed, installed
        containers: dict[str, Container] = {}
        namespaces = []
        for host in (one, two):
            ct = stack.enter_context(Container(
                name=host, bind_ro=[(fleet.app_dir, APP_DIR), (stages[host], STAGE_IN_CONTAINER)]))
            containers[host] = ct
            namespaces.append(os.readlink(f"/proc/{ct.pid}/ns/pid"))
            # The cached root's /etc/hostname names every container alike: name this one,
            # as a sysadmin names a new server.
            ct.write_file("/etc/hostname", f"{host}\n")
            ct.run(["hostname", host])
            assert ct.run(["hostname"]).stdout.strip() == host
            copy_from_stage(ct)
            ct.write_file(SECRETS_FILE, fleet.secrets, mode=0o600)
            ct.systemctl("daemon-reload")
            ct.systemctl("start", TARGET)
        try:
            _exercise(fleet, containers, one, two)
        except BaseException:
            for host, ct in containers.items():
                print(f"--- {host} ---\n{ct.journal(lines=200)}")
            raise
    assert not any(in_namespace(namespace) for namespace in namespaces)


def _exercise(fleet: Fleet, containers: dict[str, Container], one: str, two: str) -> None:
    site = load_deployment(fleet.out / "hosts" / one).site
    control = probe.control_app([fleet.broker_url], timeout=3.0)
    app = make_client(fleet.broker_url)
    app.conf.task_routes = {p: {"queue": q} for p, q in fleet.site["routes"].items()}
    try:
        last: list[str] = []

        def all_up() -> bool:
            last[:] = probe.FleetHealth(pools=probe.pool_health(control, site, "")).missing()
            return not last

        wait_for(all_up, 180, interval=1, what="every node of both hosts",
                 describe=lambda: f"missing: {last}")
        running = {host: ct.run(["systemctl", "list-units", "--no-legend", "--state=active",
                                 "demo-*"]).stdout for host, ct in containers.items()}
        assert "demo-beat" in running[one] and "demo-worker-slow" not in running[one]
        assert "demo-beat" not in running[two] and "demo-worker-slow" in running[two]
        code, text = status(fleet, two)
        print(f"status of {two}'s share, both hosts up (exit {code}):\n{text}")
        assert code == 0, text

        slow = [app.send_task("demoapp.slow", kwargs={"seconds": 0.2, "value": n})
                for n in range(4)]
        ran = [result.get(timeout=120) for result in slow]
        assert {(r["node"], r["host"]) for r in ran} == {(f"slow@{two}", two)}

        stop_started = time.monotonic()
        containers[two].systemctl("stop", "--no-block", TARGET)

        def stopped() -> bool:
            states = containers[two].systemctl("is-active", TARGET, *WORKERS, check=False)
            return set(states.stdout.split()) <= {"inactive", "failed"}

        wait_for(stopped, 240, interval=1, what=f"{two}'s fleet to stop")
        results = {unit: containers[two].unit_properties(unit, "Result")["Result"]
                   for unit in WORKERS}
        print(f"{two} stopped in {time.monotonic() - stop_started:.0f}s: {results}")
        code, text = status(fleet, two)
        print(f"status with {two} stopped (exit {code}):\n{text}")
        assert code == 1, text
        assert any(line.startswith("host") and two in line and "pool slow DOWN" in line
                   for line in text.splitlines()), text
        parked = [app.send_task("demoapp.slow", kwargs={"seconds": 0.1, "value": n})
                  for n in range(PARKED)]
        wait_for(lambda: queue_ready(control, "demo-slow") == PARKED, 60, interval=1,
                 what=f"{PARKED} tasks waiting in demo-slow")
        containers[two].systemctl("start", TARGET)
        ran = [result.get(timeout=180) for result in parked]
        assert sorted(r["value"] for r in ran) == list(range(PARKED))
        assert {(r["node"], r["host"]) for r in ran} == {(f"slow@{two}", two)}
        report: dict[str, Any] = json.loads(run_crate_deploy(
            "status", str(fleet.out / "hosts" / two), "--json", timeout=120,
            env={**os.environ, "BROKER_PASSWORD": "guest",
                 "FLOWER_PASSWORD": fleet.flower_password}).stdout)
        assert [h["up"] for h in report["hosts"]] == [True, True], report["hosts"]
    finally:
        app.close()
        control.close()
