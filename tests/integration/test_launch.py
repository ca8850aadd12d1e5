"""`crate-deploy launch` end to end: the demo site's fleet, run in the application's own
venv (Celery 5.2.7 and 5.7.0), does the work on the right pools with the rendered
settings, runs exactly what its units say, and stops without losing a task.

Also: launch waits through a broker outage while the fleet starts (it used to crash
with a traceback and leave the fleet running unsupervised), and `stop` never signals
a process that merely reuses the pid of a launch that died without cleaning up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crate_deploy.inspect.probe import http_status
from crate_deploy.run.launch import INHERITED
from crate_deploy.state.launch import LAUNCH_TAG
from crate_deploy.systemd.units import load_service
from tests.integration.conftest import (
    QUEUES,
    BrokerProxy,
    DemoSite,
    Launch,
    TaskClient,
    cmdline,
    descendants,
    fresh_vhost,
    make_demo_site,
    node,
    run_crate_deploy,
    task_client,
    wait_for,
)

pytestmark = pytest.mark.slow

SERVICES = ["demo-worker-quick", "demo-worker-slow", "demo-beat", "demo-flower"]
# What the demo site renders for each pool, against demoapp's own prefetch 8 / early acks.
EXPECTED: dict[str, dict[str, Any]] = {
    "quick": {"concurrency": 4, "prefetch_multiplier": 4, "time_limit": None,
              "soft_time_limit": None},
    "slow": {"concurrency": 2, "prefetch_multiplier": 1, "time_limit": 120.0,
             "soft_time_limit": 100.0},
}


@pytest.fixture(scope="module")
def fleet(app_venv: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[DemoSite, Launch, TaskClient]]:
    """One launched demo fleet per venv, shared by the tests that only look at it."""
    with fresh_vhost() as vhost:
        site = make_demo_site(tmp_path_factory.mktemp("fleet"), vhost, app_venv)
        with Launch(site) as launch, task_client(site) as client:
            yield site, launch, client


# --- 1. the work goes to the pool that owns its queue ----------------------------------


def test_two_thousand_tasks_run_on_the_pools_that_own_their_queues(
        fleet: tuple[DemoSite, Launch, TaskClient]) -> None:
    _, _, client = fleet
    per_queue = 1000
    started = time.monotonic()
    quick = client.send_many("demoapp.quick", QUEUES["quick"],
                             [{"value": i} for i in range(per_queue)])
    slow = client.send_many("demoapp.slow", QUEUES["slow"],
                            [{"seconds": 0, "value": i} for i in range(per_queue)])
    values = client.gather(quick + slow, timeout=120)
    elapsed = time.monotonic() - started

    assert len(values) == 2 * per_queue
    assert [v["value"] for v in values] == list(range(per_queue)) * 2
    nodes = {"quick": {v["node"] for v in values[:per_queue]},
             "slow": {v["node"] for v in values[per_queue:]}}
    assert nodes == {"quick": {node("quick")}, "slow": {node("slow")}}, nodes
    assert elapsed < 90, f"2,000 no-op tasks took {elapsed:.1f}s"


# --- 2. the rendered settings win over the application's own ---------------------------


def _setting(conf: dict[str, Any], key: str) -> Any:
    """An effective setting from `inspect conf`: the app uses namespace CELERY, whose
    spelling Celery looks up first, so CELERY_KEY wins over key when both are there."""
    for spelling in (f"CELERY_{key.upper()}", key):
        if spelling in conf:
            return conf[spelling]
    raise KeyError(f"{key} not in {sorted(conf)}")


@pytest.mark.parametrize("pool", ["quick", "slow"])
def test_rendered_settings_take_effect_despite_the_apps_own(
        fleet: tuple[DemoSite, Launch, TaskClient], pool: str) -> None:
    _, _, client = fleet
    name, expected = node(pool), EXPECTED[pool]
    inspect = client.inspect(name, timeout=5)
    conf = (inspect.conf(with_defaults=False) or {}).get(name)
    stats = (inspect.stats() or {}).get(name)
    queues = (inspect.active_queues() or {}).get(name)
    assert conf and stats and queues is not None, f"{name} did not answer inspect"

    # demoapp sets prefetch 8, early acks and its own default queue: all overridden.
    assert _setting(conf, "worker_prefetch_multiplier") == expected["prefetch_multiplier"]
    assert _setting(conf, "task_acks_late") is True
    assert _setting(conf, "task_reject_on_worker_lost") is True
    assert _setting(conf, "task_default_queue") == QUEUES["quick"]
    if expected["time_limit"] is None:
        for key in ("task_time_limit", "task_soft_time_limit"):
            with pytest.raises(KeyError):
                _setting(conf, key)
    else:
        assert _setting(conf, "task_time_limit") == expected["time_limit"]
        assert _setting(conf, "task_soft_time_limit") == expected["soft_time_limit"]

    # What the worker really does with them.
    assert stats["pool"]["max-concurrency"] == expected["concurrency"]
    assert stats["prefetch_count"] == expected["concurrency"] * expected["prefetch_multiplier"]
    timeouts = [t or None for t in stats["pool"].get("timeouts", [0, 0])]
    assert timeouts == [expected["soft_time_limit"], expected["time_limit"]]
    assert [queue["name"] for queue in queues] == [QUEUES[pool]]


# --- 3. each process runs exactly what its unit says ---------------------------------------


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if item)


def test_processes_run_exactly_what_their_units_say(
        fleet: tuple[DemoSite, Launch, TaskClient]) -> None:
    site, launch, _ = fleet
    pids = launch.pids()
    assert sorted(pids) == sorted(SERVICES)
    # launch gives each service what systemd would: these few, then the unit's settings.
    base = {key: os.environ[key] for key in INHERITED if key in os.environ}
    venv_bin = (site.venv / "bin").resolve()
    for service, pid in pids.items():
        unit = load_service(site.unit(service), base)
        command = cmdline(pid)
        # The venv's celery is a script: the kernel runs [interpreter, script, args...].
        assert Path(command[0]).name.startswith("python"), command
        assert Path(command[0]).parent.resolve() == venv_bin, command
        assert command[1:] == unit.argv, f"{service}: {command[1:]} != {unit.argv}"
        assert unit.argv[0] == str(site.venv / "bin" / "celery")
        environ = _environ(pid)
        # Beside the unit's environment, launch's tag: how stop knows its own services.
        assert environ.pop(LAUNCH_TAG).startswith(f"{launch.launcher_pid}:"), service
        assert environ == unit.environment, service
        assert os.readlink(f"/proc/{pid}/cwd") == str(unit.working_directory)
        assert unit.working_directory == site.site_dir
    # The pools are the nodes the site names, and the pool settings are per unit.
    assert "--hostname=quick@%h" in load_service(site.unit("demo-worker-quick"), base).argv
    assert _environ(pids["demo-worker-slow"])["CRATE_DEPLOY_POOL"] == "slow"
    assert "FLOWER_PASSWORD" in _environ(pids["demo-flower"])


# --- 4. Flower: auth enforced, loopback only ------------------------------------------------


def _listening(port: int) -> dict[int, str]:
    """Socket inode -> local address of every TCP socket listening on port (v4 and v6)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # TCP_LISTEN
                found[int(fields[9])] = _address(address)
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]  # four little-endian words
    return ":".join(b"".join(words)[i:i + 2].hex() for i in range(0, 16, 2))


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for process in [pid, *descendants(pid)]:
        for fd in Path(f"/proc/{process}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def test_flower_requires_auth_and_listens_on_loopback_only(
        fleet: tuple[DemoSite, Launch, TaskClient]) -> None:
    site, launch, _ = fleet
    base = f"http://127.0.0.1:{site.flower_port}/"
    credentials = (site.flower_user, site.flower_password)
    assert http_status(base) == 401
    assert http_status(base + "api/workers") == 401
    assert http_status(base, (site.flower_user, "wrong-password")) == 401
    assert http_status(base, credentials) == 200
    assert http_status(base + "api/workers", credentials) == 200

    listening = _listening(site.flower_port)
    flower_sockets = _socket_inodes(launch.pids()["demo-flower"])
    assert set(listening) & flower_sockets, f"Flower does not listen on {site.flower_port}"
    assert set(listening.values()) == {"127.0.0.1"}, listening
    # The password is in the environment Flower gets, never in a rendered file.
    for path in site.out.rglob("*"):
        if path.is_file():
            assert site.flower_password not in path.read_text(errors="replace"), path


# --- 5. Ctrl-C lets running tasks finish and loses nothing ------------------------------------


def _ready_in_queue(client: TaskClient, queue: str) -> int:
    with client.app.connection_for_write() as connection:
        _, ready, _ = connection.default_channel.queue_declare(queue=queue, passive=True)
        return int(ready)


def test_ctrl_c_while_tasks_run_finishes_them_and_loses_none(
        demo_site: Any) -> None:
    site: DemoSite = demo_site()
    seconds, count = 3.0, 4
    with task_client(site) as client:
        with Launch(site) as launch:
            results = client.send_many("demoapp.slow", QUEUES["slow"],
                                       [{"seconds": seconds, "value": i} for i in range(count)])
            # Concurrency 2, prefetch 1: two run, two wait in the queue.
            running = wait_for(lambda: len(client.active(QUEUES["slow"])) == 2 and
                               client.active(QUEUES["slow"]), 30, what="two running tasks")
            running_ids = {task["id"] for task in running}
            interrupted_at = time.monotonic()
            launch.interrupt()
            assert launch.wait(60) == 0, launch.tail()
            stop_took = time.monotonic() - interrupted_at
            launch.assert_all_gone()
            log = launch.log()
        assert "stopped" in log.splitlines()[-1], log[-2000:]
        assert "killed after the stop timeout" not in log
        assert stop_took < seconds + 15, f"stopping took {stop_took:.1f}s"
        # The running tasks finished during the warm shutdown...
        finished = [r for r in results if r.id in running_ids]
        assert [r.get(timeout=10)["node"] for r in finished] == [node("slow")] * 2
        # ... and the waiting ones are still in the queue, not lost (the broker puts back
        # what a closed connection held unacknowledged as it notices the close: wait for it):
        wait_for(lambda: _ready_in_queue(client, QUEUES["slow"]) == count - 2, 10, 0.2,
                 what=f"{count - 2} tasks ready in {QUEUES['slow']} after the stop")
        with Launch(site):
            values = client.gather(results, timeout=60)
    assert sorted(v["value"] for v in values) == list(range(count))
    assert {v["node"] for v in values} == {node("slow")}


# --- 6. a pool process killed mid-task: the task is redelivered and done ------------------------


def test_killed_pool_process_task_is_redelivered_and_completes(demo_site: Any) -> None:
    site: DemoSite = demo_site()
    count, seconds = 4, 3.0
    with task_client(site) as client, Launch(site) as launch:
        main_pid = launch.pids()["demo-worker-slow"]
        results = client.send_many("demoapp.slow", QUEUES["slow"],
                                   [{"seconds": seconds, "value": i} for i in range(count)])
        running = wait_for(lambda: client.active(QUEUES["slow"]), 30, what="a running task")
        victim = running[0]
        child = int(victim["worker_pid"])
        assert child in descendants(main_pid), "the task does not run in a slow pool child"
        time.sleep(0.5)  # well inside the task
        os.kill(child, signal.SIGKILL)

        values = client.gather(results, timeout=90)
        assert sorted(v["value"] for v in values) == list(range(count))
        assert {v["node"] for v in values} == {node("slow")}
        # The pool replaced its child; the worker itself was not restarted.
        assert launch.pids()["demo-worker-slow"] == main_pid
        log = launch.log()
        received = log.count(f"demoapp.slow[{victim['id']}] received")
        assert received == 2, f"the killed task was received {received} time(s):\n{log[-3000:]}"
        assert "WorkerLostError" in log or "SIGKILL" in log

        # `crate-deploy stop` (rather than Ctrl-C) stops this one.
        stopped = run_crate_deploy("stop", str(site.out), timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert launch.wait(10) == 0, launch.tail()
        launch.assert_all_gone()
        assert not site.state_file.exists()


# --- a broker outage while launch waits for the fleet: it waits, it does not crash ---------


def test_launch_waits_through_a_broker_outage_while_starting(
        tmp_path: Path, latest_venv: Path) -> None:
    with fresh_vhost() as vhost, BrokerProxy() as proxy:
        site = make_demo_site(tmp_path, vhost, latest_venv,
                              broker_host=f"127.0.0.1:{proxy.port}")
        launch = Launch(site).start()
        try:
            # Cut the broker once every service is started (launch checked the broker
            # before starting them), while launch is still waiting for the pools.
            wait_for(lambda: "demo-flower started" in launch.log(), 30,
                     what="the services to start")
            proxy.cut()
            wait_for(lambda: "waiting for the broker" in launch.log(), 15,
                     what="launch to notice the outage")
            time.sleep(1)
            proxy.restore()
            launch.wait_ready()
            assert "Traceback" not in launch.log()
            assert launch.proc is not None and launch.proc.poll() is None
        except BaseException:
            launch.__exit__(RuntimeError, None, None)
            raise
        launch.__exit__(None, None, None)


# --- a stale state file never leads stop to signal a process that reuses the pid ----------


def test_stop_ignores_a_stale_state_file_whose_pid_was_reused(
        tmp_path: Path, latest_venv: Path) -> None:
    site = make_demo_site(tmp_path, "cd-test-stale", latest_venv)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        # What a SIGKILLed launch leaves behind, its pid since given to another process.
        started = int(Path(f"/proc/{bystander.pid}/stat").read_text().rsplit(")", 1)[1]
                      .split()[19])
        site.state_file.write_text(json.dumps({
            "launcher": bystander.pid, "launcher_started": started - 1,
            "services": {"demo-worker-quick": bystander.pid}}))
        stopped = run_crate_deploy("stop", str(site.out), "--timeout", "5")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "nothing launched" in stopped.stdout
        assert bystander.poll() is None, "stop signalled a process that is not its launch"
    finally:
        bystander.kill()
        bystander.wait()
