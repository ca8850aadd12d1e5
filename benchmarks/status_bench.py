#!/usr/bin/env python3
"""How long does `crate-deploy status` take on a healthy fleet, against `celery inspect
ping` of the same nodes, in the same run?

    .venv/bin/python benchmarks/status_bench.py                # Markdown table
    .venv/bin/python benchmarks/status_bench.py --reps 15 --json /tmp/s.json

The demo site (examples/demo: two pools, beat, Flower with auth) is launched once in a
fresh vhost from the application venv; then, alternating, --reps times each:

- status  `crate-deploy status DIR --json`: broker, both pools' ping and queues, queue
          depths and what the workers hold, beat, Flower with auth checked;
- ping    `celery -b URL inspect ping -d quick@HOST,slow@HOST` in the application venv,
          Celery's own check that the same two nodes answer (it waits its whole
          --timeout, 1 s, since Celery's CLI sets no reply limit).

The ratio status/ping is the figure docs/benchmarks.md quotes.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.launch_bench import DEFAULT_VENV, POOLS, LaunchedFleet  # noqa: E402
from tests.integration.conftest import CRATE_DEPLOY, fresh_vhost, make_demo_site  # noqa: E402


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{command[:3]} exited {result.returncode}:\n{result.stdout}"
                           f"{result.stderr}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"status": [], "ping": []}
    with tempfile.TemporaryDirectory(prefix="status-bench-") as scratch, \
            fresh_vhost() as vhost:
        site = make_demo_site(Path(scratch), vhost, args.venv)
        nodes = ",".join(f"{pool}@{socket.gethostname()}" for pool in POOLS)
        status = [str(CRATE_DEPLOY), "status", str(site.out), "--json"]
        ping = [str(args.venv / "bin" / "celery"), "-b", site.broker_url, "inspect", "ping",
                "-d", nodes]
        fleet = LaunchedFleet(site)
        fleet.start()
        try:
            for rep in range(args.reps):
                times["status"].append(timed(status))
                times["ping"].append(timed(ping))
                print(f"round {rep + 1}/{args.reps}: status {times['status'][-1]:.2f}s, "
                      f"ping {times['ping'][-1]:.2f}s", file=sys.stderr)
        finally:
            fleet.stop()
    medians = {case: statistics.median(values) for case, values in times.items()}
    ratio = medians["status"] / medians["ping"]
    print("| case | median | best | worst | runs |\n| --- | --- | --- | --- | --- |")
    for case, text in (("status", "`crate-deploy status` (demo fleet, all up)"),
                       ("ping", "`celery inspect ping -d` the same 2 nodes")):
        values = times[case]
        print(f"| {text} | {medians[case]:.2f} s | {min(values):.2f} s | {max(values):.2f} s "
              f"| {len(values)} |")
    print(f"\nstatus / ping = {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"seconds": times, "ratio": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
