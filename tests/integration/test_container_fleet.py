"""The demo fleet, rendered and installed by crate-deploy, under a real systemd (container).

The issue asks for this: "Under a real systemd in a container: the hardened units
start, every pool answers, tasks run, `systemctl stop` of the target with slow tasks
in flight loses none", and "restarts one changed unit". So, with systemd 252 as PID 1
of a systemd-nspawn container over the cached Debian root (tests/systemd_container.py):

1. the demo site (examples/demo) is written for the container -- its venv
   /opt/crate-demo/venv, user www-data, a root-only secrets file, config in
   /etc/crate-deploy/demo, state in /var/lib/demo (StateDirectory=) -- on a fresh
   vhost of the host's RabbitMQ, and rendered by this checkout's `crate-deploy render`;
2. `crate-deploy launch --systemd --root STAGE` installs it into a staging tree, as
   into an image; the tree (units, enable links, config) is copied into the booted
   container, and `systemctl start demo.target` starts it;
3. every pool answers a control ping from the host (node POOL@<container hostname>)
   and consumes its queue, Flower refuses the UI without its password and serves it
   with, every unit is active, runs as www-data, and `systemd-analyze security` of the
   running manager rates each at most 2.5;
4. tasks sent from the host run, each on the pool that owns its queue;
5. one pool is changed (concurrency 4 -> 3): render, `launch --systemd --root STAGE`
   again says only that unit would restart; its file is copied in, and `systemctl
   try-restart` of it gives it a new main process and leaves the others alone;
6. with slow tasks running, `systemctl stop demo.target`: the running tasks finish and
   their results arrive, the ones still queued stay in the broker (and run once the
   pool is back), every unit ends inactive with result "success" -- a warm shutdown,
   nothing killed.

Needs root, systemd-nspawn, the root `.ci/container-rootfs` builds, and RabbitMQ on
127.0.0.1:5672 (guest/guest, `rabbitmqctl`). Missing any of them, it skips on a
developer machine and fails under CI (CI=true or CRATE_DEPLOY_REQUIRE_CONTAINER=1).

    .ci/container-rootfs
    .venv/bin/pytest -m slow tests/integration/test_container_fleet.py -v
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from crate_deploy.inspect import probe
from crate_deploy.site.model import Site
from crate_deploy.state.deployment import load_deployment
from tests.integration.conftest import (
    DEMO,
    TaskClient,
    free_port,
    make_client,
    run_crate_deploy,
    wait_for,
)
from tests.rabbit import amqp_url, broker_problem, temporary_vhost
from tests.systemd_container import (
    APP_DIR,
    VENV,
    Container,
    container_available,
    skip_or_fail,
)

pytestmark = pytest.mark.slow

CONFIG_DIR = "/etc/crate-deploy/demo"
SECRETS_FILE = "/etc/crate-deploy/demo-secrets.env"
STATE_DIR = "/var/lib/demo"  # the default for project "demo": StateDirectory=demo
STAGE_IN_CONTAINER = "/srv/crate-deploy-stage"  # the staging tree, bound read-only
TARGET = "demo.target"
POOLS = {"quick": "demo-quick", "slow": "demo-slow"}  # pool -> the queue it consumes
WORKERS = {pool: f"demo-worker-{pool}.service" for pool in POOLS}
SERVICES = [*WORKERS.values(), "demo-beat.service", "demo-flower.service"]
MAX_EXPOSURE = 2.5
SLOW_SECONDS = 8.0
# A warm stop of the slow pool takes about SLOW_SECONDS; its TimeoutStopSec is 150 s.
STOP_WITHIN = 60.0


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    """Skip (or fail under CI) before creating anything if the test cannot run here."""
    reason = container_available() or broker_problem()
    if reason:
        skip_or_fail(reason)


@pytest.fixture
def vhost() -> Iterator[str]:
    with temporary_vhost("cd-fleet") as name:
        yield name


class Fleet:
    """The demo site on the host (site file, render output, staging tree) and in the
    container, with the host-side helpers the test uses."""

    def __init__(self, tmp: Path, vhost: str) -> None:
        self.tmp = tmp
        self.vhost = vhost
        self.site_file = tmp / "site.yaml"
        self.out = tmp / "out"
        self.stage = tmp / "stage"
        self.stage.mkdir()
        self.app_dir = tmp / "app"  # bound read-only at APP_DIR
        self.app_dir.mkdir()
        shutil.copy(DEMO / "demoapp.py", self.app_dir / "demoapp.py")
        self.app_dir.chmod(0o755)  # the bind mount's root: www-data must enter it
        (self.app_dir / "demoapp.py").chmod(0o644)
        self.flower_port = free_port()
        self.flower_password = f"flower-{uuid.uuid4().hex[:16]}-pw"
        self.broker_url = amqp_url(vhost)
        self.site = self._site_data()
        self.hostname = ""  # the container's, once booted

    def _site_data(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load((DEMO / "site.yaml").read_text(encoding="utf-8"))
        data.update({
            "venv": VENV,
            # The venv is in the container, not here: say which versions it holds.
            "celery_version": "5.2.7",
            "flower_version": "2.0.1",
            "working_directory": APP_DIR,
            "user": "www-data",
            "secrets_file": SECRETS_FILE,
            "paths": {"config_dir": CONFIG_DIR},  # state_dir: the default, /var/lib/demo
        })
        data["broker"]["urls"] = [
            f"amqp://guest:${{BROKER_PASSWORD}}@127.0.0.1:5672/{self.vhost}"]
        data["flower"]["port"] = self.flower_port
        assert data["flower"]["auth"][0]["password"] == "${FLOWER_PASSWORD}"
        assert data["beat"]["enabled"] is True
        assert data.get("systemd", {}).get("hardening", True) is True
        assert {w["name"]: w.get("time_limit") for w in data["workers"]} == {
            "quick": None, "slow": 120}
        return data

    @property
    def secrets(self) -> str:
        return f"BROKER_PASSWORD=guest\nFLOWER_PASSWORD={self.flower_password}\n"

    @property
    def model(self) -> Site:
        return load_deployment(self.out).site

    def render(self, change: Callable[[dict[str, Any]], None] | None = None) -> str:
        if change is not None:
            change(self.site)
        self.site_file.write_text(yaml.safe_dump(self.site, sort_keys=False), encoding="utf-8")
        result = run_crate_deploy("render", str(self.site_file), "-o", str(self.out),
                                  timeout=120)
        assert result.returncode == 0, f"render failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def install(self) -> tuple[str, list[str]]:
        """`launch --systemd --root STAGE OUT`: its output, and the files it created or
        changed, as paths inside the root (where they go in the container)."""
        result = run_crate_deploy("launch", "--systemd", "--root", str(self.stage),
                                  str(self.out), timeout=120)
        assert result.returncode == 0, f"install failed:\n{result.stdout}\n{result.stderr}"
        stage = str(self.stage.resolve())
        touched = [line.split(None, 1)[1].removeprefix(stage) for line in
                   result.stdout.splitlines()
                   if line.split(None, 1)[:1] in (["created"], ["changed"])]
        return result.stdout, touched


def copy_from_stage(ct: Container, *paths: str) -> None:
    """Copy files (or, with no paths, the whole tree) from the staging tree into the
    container's own file system, as an image build or a config-management run would."""
    if not paths:
        ct.run(["cp", "-a", "--", f"{STAGE_IN_CONTAINER}/etc/.", "/etc/"])
        return
    for path in paths:
        ct.run(["cp", "-a", "--", f"{STAGE_IN_CONTAINER}{path}", path])


def main_pids(ct: Container) -> dict[str, int]:
    return {unit: int(ct.unit_properties(unit, "MainPID")["MainPID"]) for unit in SERVICES}


def exposure(ct: Container, unit: str) -> float:
    """The overall exposure `systemd-analyze security` gives a loaded unit (running manager)."""
    result = ct.run(["systemd-analyze", "security", "--no-pager", unit], check=False)
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)",
                      result.stdout)
    assert found, f"no exposure for {unit}:\n{result.stdout}\n{result.stderr}"
    return float(found.group(1))


def wait_until_up(ct: Container, fleet: Fleet, app: Any, timeout: float = 60.0) -> None:
    """Every pool answers a ping on its own queues, and Flower answers with auth enforced."""
    site = fleet.model
    credentials = ("admin", fleet.flower_password)
    last: list[str] = []

    def up() -> bool:
        failed = [u for u in SERVICES if ct.unit_properties(u, "ActiveState")["ActiveState"]
                  == "failed"]
        if failed:
            pytest.fail(f"failed: {failed}\n" + "\n".join(ct.journal(u) for u in failed))
        health = probe.FleetHealth(pools=probe.pool_health(app, site, fleet.hostname),
                                   flower=probe.flower_health(site, credentials))
        last[:] = health.missing()
        return not last

    journals = lambda: "\n".join(ct.journal(unit, lines=30) for unit in SERVICES)  # noqa: E731
    wait_for(up, timeout, what="every pool and Flower",
             describe=lambda: f"missing: {last}\n{journals()}")


def in_namespace(pid_namespace: str) -> list[int]:
    """Processes on this host in the given PID namespace."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns/pid") == pid_namespace:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def queue_ready(app: Any, queue: str) -> int:
    """Messages ready in a queue (passive declare: the queue must exist)."""
    with app.connection_for_write() as connection, connection.channel() as channel:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)


def stats(client: TaskClient, node: str) -> dict[str, Any]:
    replies = client.inspect(node, timeout=3.0).stats() or {}
    return dict(replies.get(node) or {})


def test_fleet_under_systemd(tmp_path: Path, vhost: str) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    fleet = Fleet(tmp_path, vhost)

    # 1-2. render, install into the staging tree (units, enable links, config).
    rendered = fleet.render()
    assert "for Celery 5.2.7" in rendered, rendered
    installed, touched = fleet.install()
    assert f"enabled: {TARGET} {' '.join(SERVICES)}" in installed, installed
    assert "would restart: (nothing)" in installed, installed
    assert f"{CONFIG_DIR}/demo.env" in touched and f"/etc/systemd/system/{TARGET}" in touched
    wants = fleet.stage / "etc/systemd/system/demo.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == sorted(SERVICES)

    with Container(bind_ro=[(fleet.app_dir, APP_DIR), (fleet.stage, STAGE_IN_CONTAINER)]) as ct:
        timings["boot"] = ct.boot_seconds
        pid_namespace = os.readlink(f"/proc/{ct.pid}/ns/pid")
        try:
            _exercise(ct, fleet, timings)
        except BaseException:
            print(f"--- container journal (booted in {ct.boot_seconds:.1f}s) ---")
            print(ct.journal(lines=400))
            for unit in SERVICES:
                print(f"--- {unit} ---\n{ct.journal(unit, lines=80)}")
            raise
    # Nothing of the container is left: no process on this host in its PID namespace.
    assert not ct.running
    assert not in_namespace(pid_namespace)
    # Nothing is left listening: Flower (in the container) is gone.
    assert probe.http_status(f"http://127.0.0.1:{fleet.flower_port}/healthcheck") is None
    timings["total"] = time.monotonic() - started
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))


def _exercise(ct: Container, fleet: Fleet, timings: dict[str, float]) -> None:
    fleet.hostname = ct.run(["hostname"]).stdout.strip()
    assert fleet.hostname
    nodes = {pool: f"{pool}@{fleet.hostname}" for pool in POOLS}
    copy_from_stage(ct)
    ct.write_file(SECRETS_FILE, fleet.secrets, mode=0o600)
    listing = ct.run(["stat", "-c", "%a %U:%G", SECRETS_FILE]).stdout.split()
    assert listing == ["600", "root:root"], listing
    link = ct.run(["readlink", "/etc/systemd/system/demo.target.wants/demo-worker-slow.service"])
    assert link.stdout.strip() == "/etc/systemd/system/demo-worker-slow.service"
    ct.systemctl("daemon-reload")
    assert ct.systemctl("is-enabled", TARGET).stdout.strip() == "enabled"

    # 3. start the target; every pool answers, Flower enforces its password.
    t0 = time.monotonic()
    ct.systemctl("start", TARGET)
    control = probe.control_app([fleet.broker_url], timeout=3.0)
    client = TaskClient(make_client(fleet.broker_url))
    try:
        wait_until_up(ct, fleet, control)
        timings["start to ready"] = time.monotonic() - t0
        active = ct.systemctl("is-active", TARGET, *SERVICES).stdout.split()
        assert active == ["active"] * (1 + len(SERVICES)), active
        flower = f"http://127.0.0.1:{fleet.flower_port}/"
        assert probe.http_status(flower) == 401
        assert probe.http_status(flower, ("admin", "not-the-password")) == 401
        assert probe.http_status(flower, ("admin", fleet.flower_password)) == 200
        pids = main_pids(ct)
        for unit, pid in pids.items():
            assert pid > 0, unit
            user = ct.run(["ps", "-o", "user=", "-p", str(pid)]).stdout.strip()
            assert user == "www-data", (unit, user)
        state = ct.run(["stat", "-c", "%a %U", STATE_DIR]).stdout.split()
        assert state == ["700", "www-data"], state
        exposures = {unit: exposure(ct, unit) for unit in SERVICES}
        print("exposure inside the container: "
              + ", ".join(f"{u} {e:.1f}" for u, e in exposures.items()))
        assert all(e <= MAX_EXPOSURE for e in exposures.values()), exposures
        assert stats(client, nodes["quick"])["pool"]["max-concurrency"] == 4

        # 4. tasks from the host, each run by the pool owning its queue.
        t0 = time.monotonic()
        quick = client.send_many("demoapp.quick", "demo-quick",
                                 [{"value": n} for n in range(20)])
        slow = client.send_many("demoapp.slow", "demo-slow",
                                [{"seconds": 0.5, "value": n} for n in range(4)])
        done = client.gather(quick + slow, timeout=60)
        assert [r["value"] for r in done] == [*range(20), *range(4)]
        assert {r["node"] for r in done[:20]} == {nodes["quick"]}
        assert {r["node"] for r in done[20:]} == {nodes["slow"]}
        timings["24 tasks"] = time.monotonic() - t0

        # 5. one pool changed: only its unit is reinstalled and restarted.
        t0 = time.monotonic()

        def three_processes(site: dict[str, Any]) -> None:
            next(w for w in site["workers"] if w["name"] == "quick")["concurrency"] = 3

        rendered = fleet.render(three_processes)
        changed = sorted(str(Path(line.split()[1]).relative_to(fleet.out))
                         for line in rendered.splitlines() if line.split()[:1] == ["changed"])
        assert changed == ["deployment.json", "systemd/demo-worker-quick.service"], rendered
        installed, touched = fleet.install()
        assert "would restart: demo-worker-quick.service\n" in installed, installed
        assert f"/etc/systemd/system/{WORKERS['quick']}" in touched, installed
        assert not [p for p in touched if p.startswith("/etc/systemd/") and "quick" not in p]
        copy_from_stage(ct, *touched)
        ct.systemctl("daemon-reload")
        restart = installed.split("would restart: ", 1)[1].split("\n", 1)[0].split()
        ct.systemctl("try-restart", *restart)
        wait_until_up(ct, fleet, control)
        after = main_pids(ct)
        assert after[WORKERS["quick"]] != pids[WORKERS["quick"]], (pids, after)
        assert {u: p for u, p in after.items() if u != WORKERS["quick"]} == {
            u: p for u, p in pids.items() if u != WORKERS["quick"]}, (pids, after)
        assert stats(client, nodes["quick"])["pool"]["max-concurrency"] == 3
        assert ct.unit_properties(WORKERS["quick"], "NRestarts")["NRestarts"] == "0"
        done = client.gather(client.send_many("demoapp.quick", "demo-quick",
                                              [{"value": n} for n in range(6)]), timeout=30)
        assert {r["node"] for r in done} == {nodes["quick"]}
        timings["change one pool"] = time.monotonic() - t0

        # 6. stop the target with slow tasks in flight: none is lost.
        t0 = time.monotonic()
        slow = client.send_many("demoapp.slow", "demo-slow",
                                [{"seconds": SLOW_SECONDS, "value": n} for n in range(4)])
        value_of = {result.id: n for n, result in enumerate(slow)}

        def two_running() -> list[dict[str, Any]]:
            tasks = client.active("demo-slow")
            return tasks if len(tasks) == 2 else []

        running = wait_for(two_running, 30, what="2 slow tasks running (the pool's concurrency)")
        running_ids = {task["id"] for task in running}
        assert {task["hostname"] for task in running} == {nodes["slow"]}
        stop_issued = time.monotonic()
        ct.systemctl("stop", TARGET)
        # The services are ordered after their target, so systemctl returns once they
        # have stopped warmly; the test still waits for every unit to be inactive.
        timings["systemctl stop returned"] = time.monotonic() - stop_issued

        def stopped() -> bool:
            states = ct.systemctl("is-active", TARGET, *SERVICES, check=False).stdout.split()
            return set(states) <= {"inactive", "failed"}

        wait_for(stopped, STOP_WITHIN, what="the fleet to stop",
                 describe=lambda: ct.journal(WORKERS["slow"], lines=60))
        stop_seconds = time.monotonic() - stop_issued
        timings["warm stop"] = stop_seconds
        slow_log = ct.journal(WORKERS["slow"])
        first = [r for r in slow if r.id in running_ids]
        assert len(first) == 2, (running_ids, [r.id for r in slow])
        values = client.gather(first, timeout=10)  # they finished during the stop
        assert [v["value"] for v in values] == [value_of[r.id] for r in first]
        assert {v["node"] for v in values} == {nodes["slow"]}, slow_log
        for unit in SERVICES:
            props = ct.unit_properties(unit, "ActiveState", "Result", "NRestarts")
            assert props == {"ActiveState": "inactive", "Result": "success",
                             "NRestarts": "0"}, (unit, props, ct.journal(unit, lines=40))
        worker_exit = ct.unit_properties(WORKERS["slow"], "ExecMainCode", "ExecMainStatus")
        assert worker_exit == {"ExecMainCode": "1", "ExecMainStatus": "0"}, slow_log
        assert "Warm shutdown" in slow_log, slow_log
        for bad in ("SIGKILL", "Killing process", "timed out", "WorkerLostError",
                    "Traceback", "Restarting"):
            assert bad not in slow_log, (bad, slow_log)
        assert stop_seconds < SLOW_SECONDS + 20, slow_log
        # The tasks that had not started are still queued, and run once the pool is back.
        left = [r for r in slow if r.id not in running_ids]
        assert len(left) == 2
        wait_for(lambda: queue_ready(control, "demo-slow") == 2, 10,
                 what="the 2 slow tasks that had not started to be ready in demo-slow")
        assert all(r.state == "PENDING" for r in left)
        ct.systemctl("start", WORKERS["slow"])
        values = client.gather(left, timeout=60)
        assert [v["value"] for v in values] == [value_of[r.id] for r in left]
        assert {v["node"] for v in values} == {nodes["slow"]}
        assert queue_ready(control, "demo-slow") == 0
        timings["slow tasks through a stop"] = time.monotonic() - t0
    finally:
        client.app.close()
        control.close()
