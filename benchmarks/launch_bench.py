#!/usr/bin/env python3
"""How long does `crate-deploy launch` take to bring the demo fleet up, and how fast is
the fleet it runs, against Celery's own tools?

Run it with the interpreter of the venv crate-deploy is installed in, with RabbitMQ on
127.0.0.1:5672 (guest/guest, `rabbitmqctl` usable) and the cached application venvs:

    .venv/bin/python benchmarks/launch_bench.py                  # Markdown table
    .venv/bin/python benchmarks/launch_bench.py --reps 7 --tasks 10000 --json /tmp/b.json
    .venv/bin/python benchmarks/launch_bench.py --venv /var/cache/crate-deploy/venvs/celery-5.2

Everything runs in one fresh RabbitMQ vhost (deleted at the end), in the application
venv, from the demo site (examples/demo) rendered into a temporary directory.

Start-up (the cases alternate, --reps rounds each):

- launch   `crate-deploy launch DIR` until it prints "ready in": two pools answer ping
           and consume their queues, beat runs, Flower answers with auth enforced. Then
           Ctrl-C (SIGINT), not timed.
- multi    `celery multi start` of the same two worker nodes with the same arguments
           (less --without-mingle/--without-gossip: Celery's default bootsteps),
           environment and working directory as their units (one `multi start` per
           node, since each unit sets its own CRATE_DEPLOY_POOL), until both nodes answer
           ping (polled every 0.1 s). Then `celery multi stopwait`, not timed.

Throughput (--rounds rounds each, alternating): --tasks no-op `demoapp.quick` tasks
sent over one producer connection to demo-quick, results over rpc://, timed from the
first send to the last result (after a 200-task warm-up):

- launched  the launched fleet's quick pool (concurrency 4, prefetch 4, late acks,
            reject on worker lost, task events on: what the site renders)
- by hand   `celery -A demoapp -b URL --result-backend rpc:// worker -Q demo-quick`:
            Celery's defaults (concurrency = CPUs) under demoapp's own config
            (prefetch 8, early acks), no task events
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crate_deploy.run.launch import INHERITED  # noqa: E402
from crate_deploy.systemd.units import load_service  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    CRATE_DEPLOY,
    DemoSite,
    fresh_vhost,
    make_client,
    make_demo_site,
)

DEFAULT_VENV = Path("/var/cache/crate-deploy/venvs/celery-latest")
POOLS = ("quick", "slow")


# --- the fleet, three ways --------------------------------------------------------------


class LaunchedFleet:
    """`crate-deploy launch DIR`, its output read line by line as it comes."""

    def __init__(self, site: DemoSite) -> None:
        self.site = site
        self.lines: list[str] = []
        self.ready = threading.Event()

    def start(self) -> float:
        """Start it and return the seconds until it printed "ready in"."""
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(CRATE_DEPLOY), "launch", str(self.site.out), "--timeout", "120"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(150):
            self.stop()
            raise RuntimeError("launch never got ready:\n" + "\n".join(self.lines[-40:]))
        return self.ready_at - started

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if "ready in" in line and not self.ready.is_set():
                self.ready_at = time.perf_counter()
                self.ready.set()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise RuntimeError("launch did not stop") from None
        if code != 0:
            raise RuntimeError(f"launch exited {code}:\n" + "\n".join(self.lines[-40:]))


class MultiNodes:
    """The same two worker nodes under `celery multi`, as their units would run them."""

    def __init__(self, site: DemoSite, rundir: Path) -> None:
        self.site, self.rundir = site, rundir
        base = {key: os.environ[key] for key in INHERITED if key in os.environ}
        self.units = {pool: load_service(site.unit(f"demo-worker-{pool}"), base)
                      for pool in POOLS}

    def _multi(self, action: str, pool: str) -> None:
        unit = self.units[pool]
        celery, *args = unit.argv  # celery -A APP worker --hostname=... OPTIONS...
        # Celery's own bootsteps for the peer: the units drop mingle and gossip.
        options = [a for a in args if a != "worker" and not a.startswith("--hostname=")
                   and a not in ("--without-mingle", "--without-gossip")]
        command = [celery, "multi", action, pool, *options,
                   f"--pidfile={self.rundir}/%n.pid", f"--logfile={self.rundir}/%n%I.log"]
        subprocess.run(command, env=unit.environment, cwd=unit.working_directory,
                       check=True, capture_output=True, timeout=120)

    def start(self, app: Any) -> float:
        started = time.perf_counter()
        for pool in POOLS:
            self._multi("start", pool)
        wait_for_ping(app, [f"{pool}@{socket.gethostname()}" for pool in POOLS])
        return time.perf_counter() - started

    def stop(self) -> None:
        for pool in POOLS:
            self._multi("stopwait", pool)


@contextmanager
def hand_worker(site: DemoSite, app: Any) -> Iterator[None]:
    """A worker started by hand: Celery's defaults, demoapp's own config."""
    celery = site.venv / "bin" / "celery"
    env = {key: os.environ[key] for key in ("PATH", "LANG", "HOME") if key in os.environ}
    proc = subprocess.Popen(
        [str(celery), "-A", "demoapp", "-b", site.broker_url, "--result-backend", "rpc://",
         "worker", "-Q", "demo-quick", "--loglevel=WARNING"],
        cwd=site.site_dir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_ping(app, [f"celery@{socket.gethostname()}"])
        yield
    finally:
        stop_worker(proc)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (SIGTERM), then its whole session killed if it takes over a minute."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait_for_ping(app: Any, nodes: list[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.ping(destination=nodes, timeout=1.0) or []
        if {node for reply in replies for node in reply} >= set(nodes):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{nodes} did not answer ping within {timeout:g}s")


# --- measuring --------------------------------------------------------------------------


def throughput(app: Any, count: int) -> float:
    """Tasks per second for `count` no-op demoapp.quick tasks, send to last result."""
    from celery.result import ResultSet

    def run(n: int) -> float:
        started = time.perf_counter()
        with app.producer_or_acquire() as producer:
            results = [app.send_task("demoapp.quick", kwargs={"value": i}, queue="demo-quick",
                                     producer=producer) for i in range(n)]
        values = ResultSet(results, app=app).join_native(timeout=600)
        took = time.perf_counter() - started
        assert len(values) == n
        return n / took

    run(200)  # warm-up: connections, pool processes, the reply queue
    return run(count)


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help="the application venv (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=5, help="start-up rounds per case")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per case")
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per throughput round")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    startup: dict[str, list[float]] = {"launch": [], "multi": []}
    rate: dict[str, list[float]] = {"launched": [], "by hand": []}
    with tempfile.TemporaryDirectory(prefix="launch-bench-") as scratch, \
            fresh_vhost() as vhost:
        site = make_demo_site(Path(scratch), vhost, args.venv)
        (rundir := Path(scratch) / "multi").mkdir()
        app = make_client(site.broker_url)
        try:
            for rep in range(args.reps):
                fleet = LaunchedFleet(site)
                startup["launch"].append(fleet.start())
                fleet.stop()
                multi = MultiNodes(site, rundir)
                startup["multi"].append(multi.start(app))
                multi.stop()
                print(f"start-up round {rep + 1}/{args.reps}: launch "
                      f"{startup['launch'][-1]:.2f}s, multi {startup['multi'][-1]:.2f}s",
                      file=sys.stderr)
            for rep in range(args.rounds):
                fleet = LaunchedFleet(site)
                fleet.start()
                try:
                    rate["launched"].append(throughput(app, args.tasks))
                finally:
                    fleet.stop()
                with hand_worker(site, app):
                    rate["by hand"].append(throughput(app, args.tasks))
                print(f"throughput round {rep + 1}/{args.rounds}: launched "
                      f"{rate['launched'][-1]:.0f}/s, by hand {rate['by hand'][-1]:.0f}/s",
                      file=sys.stderr)
        finally:
            app.close()

    versions = subprocess.run(
        [str(args.venv / "bin" / "python"), "-c",
         "import celery, kombu, flower; print(celery.__version__, kombu.__version__, "
         "flower.__version__)"], capture_output=True, text=True, check=True).stdout.split()
    results = {
        "venv": str(args.venv), "celery": versions[0], "kombu": versions[1],
        "flower": versions[2], "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_average": os.getloadavg(), "tasks": args.tasks,
        "startup_seconds": {case: summary(v) for case, v in startup.items() if v},
        "tasks_per_second": {case: summary(v) for case, v in rate.items() if v},
    }
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def table(results: dict[str, Any]) -> str:
    start, rate = results["startup_seconds"], results["tasks_per_second"]
    rows: list[tuple[str, str, str, str, int]] = []
    for case, text in {
        "launch": "`crate-deploy launch` → ready (2 pools + beat + Flower)",
        "multi": "`celery multi start` (same 2 nodes) → both answer ping",
    }.items():
        if case not in start:  # --reps 0
            continue
        s = start[case]
        rows.append((text, f"{s['median']:.2f} s", f"{s['min']:.2f} s", f"{s['max']:.2f} s",
                     len(s["runs"])))
    for case, text in {"launched": "launched quick pool (c=4, prefetch 4, late acks)",
                       "by hand": "hand-started worker (Celery defaults, demoapp config)",
                       }.items():
        if case not in rate:  # --rounds 0
            continue
        r = rate[case]
        rows.append((f"throughput: {text}", f"{r['median']:,.0f} tasks/s",
                     f"{r['max']:,.0f} tasks/s", f"{r['min']:,.0f} tasks/s", len(r["runs"])))
    lines = [f"Celery {results['celery']}, kombu {results['kombu']}, Flower "
             f"{results['flower']}, Python {results['python']}, {results['cpus']} CPUs, "
             f"load {results['load_average'][0]:.1f}; {results['tasks']} tasks per round",
             "", "| case | median | best | worst | runs |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    if "launch" in start and "multi" in start:
        ratio = start["launch"]["median"] / start["multi"]["median"]
        lines += ["", f"launch / celery multi start (medians) = {ratio:.2f}x"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
