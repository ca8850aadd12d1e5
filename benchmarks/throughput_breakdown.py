#!/usr/bin/env python3
"""What does each delivery guarantee cost? No-op task throughput, one guarantee at a time.

    .venv/bin/python benchmarks/throughput_breakdown.py                 # Markdown table
    .venv/bin/python benchmarks/throughput_breakdown.py --tasks 5000 --rounds 3

Every profile runs the same pool (prefork, concurrency 2, prefetch multiplier 4, no
mingle or gossip) on one queue of a fresh vhost, in the application venv; profiles
alternate round by round so that a busy machine weighs on all of them alike. The
profiles add one guarantee each, in this order:

- defaults     Celery's defaults: early acks, no publisher confirms, no events, no results
- late-acks    + task_acks_late and task_reject_on_worker_lost
- confirms     + publisher confirms (the producer's task publishes and the worker's)
- events       + task events (worker_send_task_events, task_send_sent_event)
- results      + results over rpc://
- rendered     the demo site as crate-deploy renders and launches it (quick pool set to
               concurrency 2, prefetch 4), Flower consuming its events
- defaults+results  Celery's defaults with results over rpc://: the peer the rendered
               profile is held against (issue 12's target: >= 0.9x of it)

Timing: from the first send to the last task done. With results, "done" is the last
result received; without them, the queue drained (polled every 20 ms by a passive
declare: at most concurrency x prefetch = 8 no-op tasks are still held then, 0.2% of
5,000). The ratio of each profile to `defaults` is what docs/benchmarks.md quotes.
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

from benchmarks.launch_bench import (  # noqa: E402
    DEFAULT_VENV,
    LaunchedFleet,
    stop_worker,
    wait_for_ping,
)
from tests.integration.conftest import fresh_vhost, make_demo_site  # noqa: E402

STEPS = ("late-acks", "confirms", "events", "results")
PROFILES = ("defaults", *STEPS, "rendered", "defaults+results")
QUEUE = "demo-quick"  # the demo's quick queue, so the rendered fleet consumes it too

BENCH_APP = '''
import os
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
'''


def steps_of(profile: str) -> list[str]:
    if profile == "defaults+results":
        return ["results"]
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


def client(broker_url: str, confirms: bool, results: bool) -> Any:
    from celery import Celery
    from kombu import Exchange, Queue

    app = Celery("bench-client", broker=broker_url, backend="rpc://" if results else None,
                 set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"],
                    task_queues=[Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE,
                                       durable=True)],
                    broker_transport_options={"confirm_publish": confirms})
    return app


def drained(app: Any) -> bool:
    with app.connection_for_write() as connection:
        _, ready, _ = connection.default_channel.queue_declare(queue=QUEUE, passive=True)
    return int(ready) == 0


def run_tasks(app: Any, count: int, results: bool) -> float:
    from celery.result import ResultSet

    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        sent = [app.send_task("demoapp.quick", kwargs={"value": i}, queue=QUEUE,
                              producer=producer) for i in range(count)]
    if results:
        assert len(ResultSet(sent, app=app).join_native(timeout=600)) == count
    else:
        while not drained(app):
            time.sleep(0.02)
    return count / (time.perf_counter() - started)


def measure(profile: str, args: argparse.Namespace, scratch: Path, site: Any) -> float:
    steps = steps_of(profile)
    results = profile == "rendered" or "results" in steps
    app = client(site.broker_url, profile == "rendered" or "confirms" in steps, results)
    try:
        if profile == "rendered":
            fleet = LaunchedFleet(site)
            fleet.start()
            try:
                run_tasks(app, 200, results)  # warm-up
                return run_tasks(app, args.tasks, results)
            finally:
                fleet.stop()
        with bench_worker(args.venv, scratch, site.broker_url, steps):
            wait_for_ping(app, [f"bench@{socket.gethostname()}"])
            run_tasks(app, 200, results)
            return run_tasks(app, args.tasks, results)
    finally:
        app.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    profiles = args.profiles.split(",")
    rates: dict[str, list[float]] = {profile: [] for profile in profiles}
    overrides = {"workers": {"quick": {"concurrency": 2, "prefetch_multiplier": 4}}}
    with tempfile.TemporaryDirectory(prefix="throughput-") as scratch, fresh_vhost() as vhost:
        site = make_demo_site(Path(scratch), vhost, args.venv, overrides)
        for round_number in range(args.rounds):
            for profile in profiles:
                rates[profile].append(measure(profile, args, Path(scratch), site))
                print(f"round {round_number + 1}/{args.rounds} {profile}: "
                      f"{rates[profile][-1]:.0f} tasks/s", file=sys.stderr)
    print(table(rates, args.tasks))
    if args.json:
        args.json.write_text(json.dumps({"tasks": args.tasks, "rates": rates,
                                         "load": os.getloadavg()}, indent=2) + "\n")
    return 0


def table(rates: dict[str, list[float]], tasks: int) -> str:
    base = statistics.median(rates["defaults"]) if rates.get("defaults") else None
    lines = [f"{tasks} no-op tasks per round, load {os.getloadavg()[0]:.1f}", "",
             "| profile | median tasks/s | best | worst | vs defaults |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for profile, values in rates.items():
        median = statistics.median(values)
        ratio = f"{median / base:.2f}x" if base else "-"
        lines.append(f"| {profile} | {median:,.0f} | {max(values):,.0f} | {min(values):,.0f} "
                     f"| {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
