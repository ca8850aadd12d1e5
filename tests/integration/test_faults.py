"""Faults while a real fleet works: nothing confirmed to the publisher is lost.

Each test launches a one-pool site (fault_support.fault_site: the demo site of
conftest.py running a small application whose tasks write a line when they start and
when they finish) in its own RabbitMQ vhost, sends tasks with the rendered settings
(publisher confirms, persistent delivery), does something hostile, and counts on disk
what completed. Each prints a `RELIABILITY|case|celery|sent|in_flight|completed|lost|
recovery_s|notes` line; docs/reliability.md's table is made from them (run with -s).

1. SIGKILL a pool's child process mid-task (Celery 5.2 and latest).
2. SIGKILL a pool's main process while several tasks run: launch restarts it.
3. `rabbitmqctl stop_app` / `start_app` while tasks are published and run.
4. Re-render with new pool settings and relaunch (warm stop) while tasks flow.
5. A poison task on a quorum queue with a delivery limit ends in QUEUE.dead.
6. A pool started before the broker answers still keeps what is dead-lettered.
7. The limit: without a delivery limit (Celery 5.2, classic queue) a poison task loops.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (
    BrokerProxy,
    Launch,
    descendants,
    node,
    run_crate_deploy,
    venv_or_skip,
    wait_for,
)
from tests.integration.fault_support import (
    POOL,
    QUEUE,
    SERVICE,
    Ledger,
    Publisher,
    alive,
    broker_outage,
    celery_version,
    fault_site,
    queue_depth,
    record,
    run_unit,
)

pytestmark = pytest.mark.slow

VENVS = ["celery52", "celery57"]
# The same faults under `delivery: fast` (results without confirm waits, no task events,
# no per-task lines) on the newest Celery only: what fast keeps (late acks, confirmed
# persistent task publishes) is what these tests count on, and the test time stays small.
WITH_FAST = [pytest.param("celery52", "reliable", id="celery52"),
             pytest.param("celery57", "reliable", id="celery57"),
             pytest.param("celery57", "fast", id="celery57-fast")]


def _delivery(delivery: str) -> dict[str, str]:
    """Site overrides for a delivery profile (reliable: the site as it always was)."""
    return {"delivery": delivery} if delivery != "reliable" else {}


def _case(name: str, delivery: str) -> str:
    return name if delivery == "reliable" else f"{name}, delivery: {delivery}"


# --- 1. a pool's child process killed mid-task ---------------------------------------


@pytest.mark.parametrize(("venv_key", "delivery"), WITH_FAST)
def test_child_killed_mid_task_is_redelivered_and_completes(
        tmp_path: Path, vhost: str, venv_key: str, delivery: str) -> None:
    venv = venv_or_skip(venv_key)
    site = fault_site(tmp_path, vhost, venv, concurrency=2, overrides=_delivery(delivery))
    ledger = Ledger(tmp_path / "ledger")
    count, seconds = 4, 2.0  # two run, two wait
    publisher = Publisher(site, ledger)
    try:
        with Launch(site) as launch:
            main_pid = launch.pids()[SERVICE]
            keys = publisher.send_many("work", "c", count, seconds=seconds)
            victim = wait_for(lambda: ledger.running(keys)[:1], 30, 0.05,
                              what="a running task")[0]
            child = ledger.starts(victim)[0][0]
            assert child in descendants(main_pid), "the task does not run in a pool child"
            time.sleep(0.5)  # well inside the task
            in_flight = count - len(ledger.completed(keys))
            killed_at = time.time()
            os.kill(child, signal.SIGKILL)

            missing = ledger.wait_completed(keys, 60)
            assert launch.pids()[SERVICE] == main_pid, "the worker itself was restarted"
    finally:
        publisher.close()
    completed = ledger.completed(keys)
    recovery = ledger.dones(victim)[0][1] - killed_at if ledger.dones(victim) else -1.0
    record(_case("child SIGKILL mid-task", delivery), celery_version(venv), sent=count,
           in_flight=in_flight, completed=len(completed), lost=len(missing), recovery_s=recovery,
           notes=f"killed task ran {len(ledger.starts(victim))}x; "
                 f"done twice: {len(ledger.run_twice(keys))}")
    assert not missing, f"lost: {missing}"
    assert len(ledger.starts(victim)) == 2, "the killed task was not redelivered exactly once"
    assert len(ledger.dones(victim)) == 1
    assert not ledger.run_twice(keys)


# --- 2. a pool's main process killed while tasks run ---------------------------------


@pytest.mark.parametrize("venv_key", VENVS)
def test_main_process_killed_is_restarted_and_every_task_completes(
        tmp_path: Path, vhost: str, venv_key: str) -> None:
    venv = venv_or_skip(venv_key)
    concurrency, count, seconds = 4, 6, 2.5  # four run, two wait
    site = fault_site(tmp_path, vhost, venv, concurrency=concurrency)
    ledger = Ledger(tmp_path / "ledger")
    publisher = Publisher(site, ledger)
    try:
        with Launch(site) as launch:
            main_pid = launch.pids()[SERVICE]
            keys = publisher.send_many("work", "m", count, seconds=seconds)
            running = wait_for(lambda: len(ledger.running(keys)) == concurrency and
                               ledger.running(keys), 30, 0.05, what="every process busy")
            children = {ledger.starts(key)[0][0] for key in running}
            time.sleep(0.5)
            in_flight = count - len(ledger.completed(keys))
            killed_at = time.time()
            os.kill(main_pid, signal.SIGKILL)

            new_pid = wait_for(lambda: (pid := launch.pids().get(SERVICE)) != main_pid and pid,
                               30, 0.1, what="the pool to be restarted")
            restarted_at = time.time()
            missing = ledger.wait_completed(keys, 60)
            launch.remember()
            log = launch.log()
            # The orphaned pool processes went with their parent, as systemd's cgroup would.
            assert not [pid for pid in children if alive(pid)], "pool children outlived main"
    finally:
        publisher.close()
    completed = ledger.completed(keys)
    last = ledger.last_done(keys)
    recovery = (last - killed_at) if last else -1.0
    record("worker main SIGKILL", celery_version(venv), sent=count, in_flight=in_flight,
           completed=len(completed), lost=len(missing), recovery_s=recovery,
           notes=f"restarted after {restarted_at - killed_at:.1f}s (RestartSec=5); "
                 f"{len(running)} interrupted tasks ran again; "
                 f"done twice: {len(ledger.run_twice(keys))}")
    assert new_pid != main_pid
    assert f"{SERVICE} was killed by SIGKILL; restarting in 5.0s" in log
    assert not missing, f"lost: {missing}"
    for key in running:  # interrupted, then run again from the start
        assert len(ledger.starts(key)) == 2 and len(ledger.dones(key)) == 1, key
    assert not ledger.run_twice(keys)


# --- 3. the broker restarts while tasks are sent and run -------------------------------


@pytest.mark.parametrize(("venv_key", "delivery"), WITH_FAST)
def test_broker_restart_loses_no_confirmed_task(tmp_path: Path, vhost: str,
                                                venv_key: str, delivery: str) -> None:
    venv = venv_or_skip(venv_key)
    site = fault_site(tmp_path, vhost, venv, concurrency=4, overrides=_delivery(delivery))
    ledger = Ledger(tmp_path / "ledger")
    publisher = Publisher(site, ledger)
    try:
        with Launch(site) as launch:
            # 12.5 tasks/s offered, 8/s done: a backlog waits in the queue at the outage.
            with publisher.flow("work", "b", interval=0.08, seconds=0.5):
                wait_for(lambda: len(ledger.completed(publisher.confirmed)) >= 6, 30, 0.1,
                         what="tasks flowing")
                in_flight = len(publisher.confirmed) - len(ledger.completed(publisher.confirmed))
                with broker_outage() as outage:
                    time.sleep(2.0)
                back = wait_for(lambda: ledger.first_start_after(publisher.confirmed,
                                                                 outage.ended), 60, 0.1,
                                what="a task started after the broker came back")
                time.sleep(1.0)
            confirmed = list(publisher.confirmed)
            missing = ledger.wait_completed(confirmed, 90)
            # The workers reconnected by themselves: the same pids, still consuming.
            assert launch.pids()[SERVICE] and "restarting" not in launch.log()
    finally:
        publisher.close()
    completed = ledger.completed(confirmed)
    unconfirmed_done = ledger.completed(publisher.failed)
    record(_case("broker stop_app/start_app", delivery), celery_version(venv), sent=len(confirmed),
           in_flight=in_flight, completed=len(completed), lost=len(missing),
           recovery_s=back - outage.ended,
           notes=f"broker down {outage.seconds + outage.stop_took:.1f}s (stop_app "
                 f"{outage.stop_took:.1f}s + 2s + start_app {outage.start_took:.1f}s), "
                 "recovery = from start_app's return to the first task started; "
                 f"{len(publisher.failed)} publishes raised (publisher retries; "
                 f"{len(unconfirmed_done)} of them ran anyway); "
                 f"done twice: {len(ledger.run_twice(confirmed))}")
    assert not missing, f"confirmed but never done: {missing}"
    assert len(confirmed) > 30


# --- 4. new pool settings: re-render and relaunch while tasks flow -----------------------


@pytest.mark.parametrize("delivery", ["reliable", "fast"])
def test_relaunch_with_new_settings_loses_nothing(tmp_path: Path, vhost: str,
                                                 delivery: str) -> None:
    venv = venv_or_skip("celery57")
    site = fault_site(tmp_path, vhost, venv, concurrency=2, prefetch=1,
                      overrides=_delivery(delivery))
    ledger = Ledger(tmp_path / "ledger")
    publisher = Publisher(site, ledger)
    try:
        with publisher.flow("work", "r", interval=0.2, seconds=0.5) as flow:
            with Launch(site) as first:
                wait_for(lambda: len(ledger.completed(publisher.confirmed)) >= 3, 30, 0.1,
                         what="tasks flowing")
                changed = site.rerender(lambda data: data["workers"][0].update(
                    concurrency=3, prefetch_multiplier=2))
                assert "changed" in changed
                in_flight = len(publisher.confirmed) - len(ledger.completed(publisher.confirmed))
                stop_at = time.time()
                stopped = run_crate_deploy("stop", str(site.out), timeout=120)
                assert stopped.returncode == 0, stopped.stdout + stopped.stderr
                assert first.wait(30) == 0, first.tail()
                first.assert_all_gone()
                queued = len(publisher.confirmed) - len(ledger.completed(publisher.confirmed))
            with Launch(site):
                ready_at = time.time()
                stats = wait_for(lambda: publisher.control_stats(node(POOL)), 20,
                                 what="the new pool's stats")
                time.sleep(1.0)
                flow.stop()
                confirmed = list(publisher.confirmed)
                missing = ledger.wait_completed(confirmed, 60)
    finally:
        publisher.close()
    completed = ledger.completed(confirmed)
    record(_case("re-render + relaunch (concurrency 2->3, prefetch 1->2)", delivery),
           celery_version(venv),
           sent=len(confirmed), in_flight=in_flight, completed=len(completed),
           lost=len(missing), recovery_s=ready_at - stop_at,
           notes=f"{queued} waited in the queue while no pool ran; "
                 f"{len(publisher.failed)} publishes raised; "
                 f"run twice: {len(ledger.run_twice(confirmed))}; "
                 f"started twice: {sum(len(ledger.starts(k)) > 1 for k in confirmed)}")
    assert stats["pool"]["max-concurrency"] == 3
    assert stats["prefetch_count"] == 3 * 2
    assert not publisher.failed, publisher.errors[:3]
    assert not missing, f"lost: {missing}"
    # A warm stop finishes what runs and returns what waits: nothing starts twice.
    assert not [key for key in confirmed if len(ledger.starts(key)) > 1]


# --- 5. a poison task on a quorum queue with a delivery limit --------------------------


def test_poison_task_is_dead_lettered_after_the_delivery_limit(
        tmp_path: Path, vhost: str) -> None:
    venv = venv_or_skip("celery57")
    limit = 3
    site = fault_site(tmp_path, vhost, venv, concurrency=2, queue={
        "type": "quorum", "delivery_limit": limit, "dead_letter": True})
    ledger = Ledger(tmp_path / "ledger")
    publisher = Publisher(site, ledger)
    try:
        with Launch(site):
            assert queue_depth(site, f"{QUEUE}.dead") == 0  # declared at worker start
            poison = publisher.next_key("poison")
            sent_at = time.time()
            assert publisher.send("poison", poison)
            quick = publisher.send_many("quick", "q", 10)
            parked = wait_for(lambda: queue_depth(site, f"{QUEUE}.dead") == 1, 60, 0.1,
                              what=f"the poison task in {QUEUE}.dead")
            parked_at = time.time()
            missing = ledger.wait_completed(quick, 30)
            runs = len(ledger.starts(poison))
            time.sleep(1.0)  # it must not come back
            assert len(ledger.starts(poison)) == runs
            listed = run_crate_deploy("requeue", "--dry-run", "-C", str(site.out))
            assert queue_depth(site, QUEUE) == 0
            assert queue_depth(site, f"{QUEUE}.dead") == 1, "the dry run took the message"
    finally:
        publisher.close()
    record("poison task, quorum delivery_limit 3", celery_version(venv), sent=1 + len(quick),
           in_flight=1 + len(quick), completed=len(ledger.completed(quick)),
           lost=len(missing), recovery_s=parked_at - sent_at,
           notes=f"poison ran {runs}x then parked in {QUEUE}.dead (the time is to parking); "
                 "requeue --dry-run lists it")
    assert parked
    assert not missing, f"ordinary tasks lost: {missing}"
    assert 1 <= runs <= limit + 1, f"the poison task ran {runs} times"
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert f"{QUEUE}.dead: 1 message(s) -> {QUEUE}" in listed.stdout
    assert "faultapp.poison (dead-lettered: delivery_limit)" in listed.stdout
    assert "would move 1 message(s) in all" in listed.stdout


def test_pool_started_before_the_broker_still_keeps_dead_letters(
        tmp_path: Path, vhost: str) -> None:
    """Boot order: the pool starts (as systemd would start it, without launch's broker
    check) before the broker answers. It must still declare QUEUE.dead once it connects,
    or the broker drops what it dead-letters. The broker is reached through a loopback
    proxy of the test's own that is switched on late; the shared broker is not touched."""
    venv = venv_or_skip("celery57")
    proxy = BrokerProxy()  # listens only once restore() is called
    site = fault_site(tmp_path, vhost, venv, concurrency=2,
                      queue={"type": "quorum", "delivery_limit": 1, "dead_letter": True},
                      overrides={"broker": {"connection_timeout": 2}},
                      broker_host=f"127.0.0.1:{proxy.port}")
    ledger = Ledger(tmp_path / "ledger")
    log = tmp_path / "worker.log"

    def printed(text: str) -> bool:
        return text in log.read_text(encoding="utf-8", errors="replace")

    try:
        with run_unit(site, SERVICE, log) as worker:
            wait_for(lambda: printed("Cannot connect to"), 30, 0.1,
                     what="the pool to retry the broker")
            proxy.restore()
            up_at = time.time()
            wait_for(lambda: printed(" ready."), 60, 0.1, what="the pool to be ready")
            ready_at = time.time()
            publisher = Publisher(site, ledger)
            try:
                poison = publisher.next_key("poison")
                assert publisher.send("poison", poison)
                quick = publisher.send_many("quick", "q", 5)
                # Before the fix the broker dropped it: QUEUE.dead was never declared.
                wait_for(lambda: queue_depth(site, f"{QUEUE}.dead") == 1, 30, 0.2,
                         what=f"the poison task in {QUEUE}.dead (dropped?)")
                parked_at = time.time()
                missing = ledger.wait_completed(quick, 30)
            finally:
                publisher.close()
            assert worker.poll() is None, "the pool exited"
            runs = len(ledger.starts(poison))
            assert queue_depth(site, QUEUE) == 0
    finally:
        proxy.cut()
    record("pool started before the broker (boot order), quorum delivery_limit 1",
           celery_version(venv), sent=1 + len(quick), in_flight=1 + len(quick),
           completed=len(ledger.completed(quick)), lost=len(missing),
           recovery_s=ready_at - up_at,
           notes=f"recovery = broker reachable -> pool ready; the poison task ran {runs}x "
                 f"and was parked in {QUEUE}.dead {parked_at - ready_at:.1f}s after ready")
    assert runs == 2
    assert not missing, f"ordinary tasks lost: {missing}"


def test_poison_task_loops_without_a_delivery_limit_on_celery_52(
        tmp_path: Path, vhost: str) -> None:
    """The limit the doc states: before Celery 5.5 crate-deploy refuses quorum queues, so
    nothing bounds a task that kills its process; it runs again and again (the pool goes on
    with the rest of the work) until someone removes it from the queue."""
    venv = venv_or_skip("celery52")
    site = fault_site(tmp_path, vhost, venv, concurrency=2)
    ledger = Ledger(tmp_path / "ledger")
    publisher = Publisher(site, ledger)
    enough = 5  # more runs than a quorum queue with delivery_limit 3 allows (4)
    try:
        with Launch(site):
            poison = publisher.next_key("poison")
            assert publisher.send("poison", poison)
            quick = publisher.send_many("quick", "q", 10)
            wait_for(lambda: ledger.starts(poison), 30, 0.1, what="the poison task to start")
            first = ledger.starts(poison)[0][1]
            missing = ledger.wait_completed(quick, 30)
            wait_for(lambda: len(ledger.starts(poison)) >= enough, 60, 0.1,
                     what=f"the poison task to run {enough} times")
            runs = ledger.starts(poison)
        # The fleet stopped warmly; the poison task is back in the queue, to loop again.
        left = queue_depth(site, QUEUE)
    finally:
        publisher.close()
    record("poison task, no delivery limit (classic queue)", celery_version(venv),
           sent=1 + len(quick), in_flight=1 + len(quick), completed=len(ledger.completed(quick)),
           lost=len(missing), recovery_s=-1.0,
           notes=f"never recovers: the poison task ran {len(runs)}x in "
                 f"{runs[-1][1] - first:.1f}s and was still queued after the stop "
                 f"({left} ready); the 10 ordinary tasks completed meanwhile")
    assert not missing, f"ordinary tasks lost: {missing}"
    assert left == 1
