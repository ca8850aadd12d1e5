#!/usr/bin/env python3
"""What does each delivery guarantee cost? Task throughput, one guarantee at a time.

    .venv/bin/python benchmarks/throughput_breakdown.py                 # Markdown table
    .venv/bin/python benchmarks/throughput_breakdown.py --tasks 3000 --rounds 3 --json out.json

Every profile runs the same pool (prefork, concurrency 2, prefetch multiplier 4, no
mingle or gossip) on one queue of a fresh vhost, in the application venv; profiles
alternate round by round so that a busy machine weighs on all of them alike. The
first five add one guarantee each, in this order, to a worker of plain Celery settings:

- defaults     Celery's defaults: early acks, no publisher confirms, no events, no results
- late-acks    + task_acks_late and task_reject_on_worker_lost
- confirms     + publisher confirms (the producer's task publishes and the worker's)
- events       + task events (worker_send_task_events, task_send_sent_event), each publish
               waiting for its confirm as plain Celery does; nothing consumes them
- results      + results over rpc://
- no-events    late acks, confirms and results, no events: what the results' confirmed
               publishes (from the pool processes) cost, beside `results`
- rendered     the demo site as crate-deploy renders and launches it (quick pool set to
               concurrency 2, prefetch 4; INFO logs through launch), Flower consuming its
               events, and a producer set up as crate_deploy_producer sets one up
               (confirms, task-sent events)
- rendered-quiet      the same with the quick pool's `log_level: warning`: no INFO line per
               task (received, succeeded) for launch to read, mask and write
- rendered-no-events  rendered-quiet with the quick pool's `task_events: false`: Flower runs
               and follows the other pool, this one sends no task events
- rendered-fast  the demo site with `delivery: fast` (docs/reliability.md): results over
               rpc:// without confirm waits, no task events, no per-task INFO lines (the
               pools' log_level left unset); its producer sends no task-sent events
- defaults+results  Celery's defaults with results over rpc://: the peer the rendered
               profile is held against (issue 12's target: >= 0.9x of it for no-op
               tasks, >= 0.97x for 10 ms tasks)

Each profile runs two kinds of work in the same worker: `noop` (`demoapp.quick`, returns at
once; --tasks of them) and `10ms` (`demoapp.slow` with seconds=0.01; --slow-tasks).

What is timed is the pool draining a backlog: its consumer is cancelled (`cancel_consumer`),
the producer fills the queue with the profile's own settings (one connection, one task
after another: the "sends/s" column, what a confirmed send costs a producer), the consumer
is added back (`add_consumer`) and the clock runs until the last task is done. With
results, "done" is the last result received; without them, the queue drained (polled
every 20 ms by a passive declare: at most concurrency x prefetch = 8 tasks are still held
then). So a producer's own rate, which on 2 busy CPUs can be below the pool's, does not
hide the pool's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.launch_bench import DEFAULT_VENV, stop_worker, wait_for_ping  # noqa: E402
from tests.integration.conftest import Launch, fresh_vhost, make_demo_site  # noqa: E402

STEPS = ("late-acks", "confirms", "events", "results")
QUIET: dict[str, Any] = {"workers": {"quick": {"log_level": "warning"}}}
# The demo site as rendered, and two variants of it that a site can choose with keys it has.
RENDERED: dict[str, dict[str, Any]] = {
    "rendered": {}, "rendered-quiet": QUIET,
    "rendered-no-events": {"workers": {"quick": {"log_level": "warning", "task_events": False}}},
    "rendered-fast": {"delivery": "fast"}}
# Peers measured beside the steps: every guarantee but events; Celery's defaults + results.
EXTRA = {"no-events": ["late-acks", "confirms", "results"], "defaults+results": ["results"]}
PROFILES = ("defaults", *STEPS, "no-events", *RENDERED, "defaults+results")
QUEUE = "demo-quick"  # the demo's quick queue, so the rendered fleet consumes it too

WORK = {"noop": ("demoapp.quick", {}), "10ms": ("demoapp.slow", {"seconds": 0.01})}

BENCH_APP = '''
import os
import time
from celery import Celery

steps = set(filter(None, os.environ["BENCH_STEPS"].split(",")))
app = Celery("bench", broker=os.environ["BENCH_BROKER"])
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                worker_prefetch_multiplier=4, broker_connection_retry_on_startup=True)
if "late-acks" in steps:
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True)
if "confirms" in steps:
    app.conf.broker_transport_options = {"confirm_publish": True}
if "events" in steps:
    app.conf.update(worker_send_task_events=True, task_send_sent_event=True)
if "results" in steps:
    app.conf.result_backend = "rpc://"
else:
    app.conf.task_ignore_result = True


@app.task(name="demoapp.quick")
def quick(value=0):
    return value


@app.task(name="demoapp.slow")
def slow(seconds=5.0, value=0):
    time.sleep(seconds)
    return value
'''


def steps_of(profile: str) -> list[str]:
    if profile in EXTRA:
        return EXTRA[profile]
    return list(STEPS[:STEPS.index(profile) + 1]) if profile in STEPS else []


@contextmanager
def bench_worker(venv: Path, scratch: Path, broker_url: str, steps: list[str]) -> Iterator[None]:
    (scratch / "bench_app.py").write_text(BENCH_APP, encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "BENCH_BROKER": broker_url,
           "BENCH_STEPS": ",".join(steps), "PYTHONPATH": str(scratch)}
    proc = subprocess.Popen(
        [str(venv / "bin" / "celery"), "-A", "bench_app", "worker", "-Q", QUEUE, "-c", "2",
         "-n", "bench@%h", "--without-mingle", "--without-gossip", "--loglevel=WARNING"],
        cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield
    finally:
        stop_worker(proc)


def client(broker_url: str, confirms: bool, results: bool, sent_events: bool) -> Any:
    from celery import Celery
    from kombu import Exchange, Queue

    app = Celery("bench-client", broker=broker_url, backend="rpc://" if results else None,
                 set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"],
                    task_queues=[Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE,
                                       durable=True)],
                    broker_transport_options={"confirm_publish": confirms},
                    task_send_sent_event=sent_events)
    return app


def drained(app: Any) -> bool:
    with app.connection_for_write() as connection:
        _, ready, _ = connection.default_channel.queue_declare(queue=QUEUE, passive=True)
    return int(ready) == 0


@contextmanager
def paused(app: Any, node: str) -> Iterator[None]:
    """The node's consumer of QUEUE cancelled for the duration, then added back."""
    replies = app.control.cancel_consumer(QUEUE, destination=[node], reply=True, timeout=10)
    assert replies, f"{node} did not answer cancel_consumer"
    try:
        yield
    finally:
        replies = app.control.add_consumer(QUEUE, destination=[node], reply=True, timeout=10)
        assert replies, f"{node} did not answer add_consumer"


def run_tasks(app: Any, node: str, work: str, count: int, results: bool) -> tuple[float, float]:
    """(tasks/s draining a backlog of `count` tasks, sends/s filling it)."""
    from celery.result import ResultSet

    name, kwargs = WORK[work]
    with paused(app, node):
        filling = time.perf_counter()
        with app.producer_or_acquire() as producer:
            sent = [app.send_task(name, kwargs={**kwargs, "value": i}, queue=QUEUE,
                                  producer=producer) for i in range(count)]
        send_rate = count / (time.perf_counter() - filling)
        started = time.perf_counter()
    if results:
        assert len(ResultSet(sent, app=app).join_native(timeout=600)) == count
    else:
        while not drained(app):
            time.sleep(0.02)
    return count / (time.perf_counter() - started), send_rate


Rates = dict[str, dict[str, list[float]]]  # "noop" / "10ms" / "send" -> profile -> rates


def measure(profile: str, args: argparse.Namespace, scratch: Path,
            sites: dict[str, Any]) -> dict[str, float]:
    """Tasks/s for each kind of work, and the producer's sends/s, of one profile."""
    steps = steps_of(profile)
    rendered = profile in RENDERED
    site = sites[profile if rendered else "rendered"]
    results = rendered or "results" in steps
    flower = bool(site.site.get("flower", {}).get("enabled"))
    app = client(site.broker_url, rendered or "confirms" in steps, results,
                 sent_events=(rendered and flower and site.site.get("delivery") != "fast")
                 or "events" in steps)
    counts = {"noop": args.tasks, "10ms": args.slow_tasks}
    try:
        with (rendered_fleet(site) if rendered
              else bench_worker(args.venv, scratch, site.broker_url, steps)):
            node = f"{'quick' if rendered else 'bench'}@{socket.gethostname()}"
            wait_for_ping(app, [node])
            run_tasks(app, node, "noop", 200, results)  # warm-up
            measured = {}
            for work in args.work:
                measured[work], send_rate = run_tasks(app, node, work, counts[work], results)
                measured.setdefault("send", send_rate)
            return measured
    finally:
        app.close()


def measure_once(profile: str, args: argparse.Namespace, scratch: Path,
                 sites: dict[str, Any], rates: Rates) -> None:
    """measure(), tried a second time if the broker went away under it (the machine's
    RabbitMQ is shared, and fault tests restart it): the round's figures are then of
    the second try."""
    try:
        measured = measure(profile, args, scratch, sites)
    except Exception as error:  # kombu, py-amqp and launch raise errors of many classes
        print(f"{profile}: {error!r}; trying again", file=sys.stderr)
        time.sleep(10)
        measured = measure(profile, args, scratch, sites)
    for kind, rate in measured.items():
        rates[kind].setdefault(profile, []).append(rate)


def rendered_fleet(site: Any) -> Launch:
    """`crate-deploy launch`, its output (INFO lines per task included) going to a file,
    as to a terminal or a log: not through this process, which is the producer and the
    result consumer being timed."""
    return Launch(site, ready_within=150)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--tasks", type=int, default=3000, help="no-op tasks per round")
    parser.add_argument("--slow-tasks", type=int, default=600, help="10 ms tasks per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--work", default=",".join(WORK), type=lambda text: text.split(","))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    profiles = args.profiles.split(",")
    rates: Rates = {kind: {} for kind in (*args.work, "send")}
    load_before = os.getloadavg()
    overrides: dict[str, Any] = {"workers": {"quick": {"concurrency": 2, "prefetch_multiplier": 4}}}
    with tempfile.TemporaryDirectory(prefix="throughput-") as scratch, fresh_vhost() as vhost:
        sites = {}
        for name, changes in RENDERED.items():
            (Path(scratch) / name).mkdir()
            sites[name] = make_demo_site(Path(scratch) / name, vhost, args.venv,
                                         _merged(overrides, changes))
        for round_number in range(args.rounds):
            for profile in profiles:
                measure_once(profile, args, Path(scratch), sites, rates)
                print(f"round {round_number + 1}/{args.rounds} {profile}: " + ", ".join(
                    f"{kind} {values[profile][-1]:.0f}/s" for kind, values in rates.items()
                    if profile in values), f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr)
    print(f"Celery {celery_version(args.venv)}; {args.tasks} no-op and {args.slow_tasks} "
          f"10 ms tasks per round, {args.rounds} rounds; load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print(table(rates))
    if args.json:
        args.json.write_text(json.dumps({"tasks": args.tasks, "slow_tasks": args.slow_tasks,
                                         "rates": rates, "load_before": load_before,
                                         "load_after": os.getloadavg()}, indent=2) + "\n")
    return 0


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def celery_version(venv: Path) -> str:
    return subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import celery; print(celery.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def table(rates: Rates) -> str:
    """A row per profile: each kind's median rate, and its ratio to the medians of
    `defaults` and `defaults+results` measured in the same run."""
    head, cells_of = ["profile"], []
    for kind in rates:
        peers = ("defaults",) if kind == "send" else ("defaults", "defaults+results")
        head += [f"{kind} /s", *(f"{kind} vs {peer}" for peer in peers)]
        cells_of.append((kind, peers))
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for profile in dict.fromkeys(p for values in rates.values() for p in values):
        cells = [profile]
        for kind, peers in cells_of:
            median = _median(rates[kind], profile)
            cells.append(f"{median:,.0f}" if median else "-")
            for peer in peers:
                base = _median(rates[kind], peer)
                cells.append(f"{median / base:.2f}x" if median and base else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _median(values: dict[str, list[float]], profile: str) -> float | None:
    return statistics.median(values[profile]) if values.get(profile) else None


if __name__ == "__main__":
    sys.exit(main())
