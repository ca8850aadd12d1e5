"""status's report: structured process fields for --json, aligned columns for people."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from crate_deploy.inspect.status import _processes, _text
from crate_deploy.run.guard import hold_launch_lock
from crate_deploy.state.deployment import load_deployment
from crate_deploy.state.launch import save_launch_state
from tests.conftest import MINIMAL, Result


def test_processes_are_state_pid_and_since(run_cli: Callable[..., Result],
                                           write_site: Callable[..., Path],
                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("render", write_site(MINIMAL), out).code == 0
    child = subprocess.Popen(["sleep", "60"])
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()
        # As a launch leaves it: this process holds the launch lock and wrote the state.
        deployment = load_deployment(out)
        lock = hold_launch_lock(deployment)
        try:
            save_launch_state(deployment, {"demo-worker-default.service": child.pid,
                                           "demo-beat.service": gone.pid})
            processes = _processes(deployment)
        finally:
            os.close(lock)
    finally:
        child.kill()
        child.wait()
    running = processes["demo-worker-default.service"]
    assert (running["state"], running["pid"]) == ("running", child.pid)
    started = datetime.fromisoformat(running["since"])
    assert timedelta(0) <= datetime.now(timezone.utc) - started < timedelta(minutes=5)
    assert processes["demo-beat.service"] == {"state": "stopped", "pid": gone.pid,
                                              "since": None}
    json.dumps(processes)  # plain JSON types


def test_text_columns_line_up() -> None:
    report = {
        "project": "demo", "up": True,
        "broker": {"reachable": True, "urls": ["amqp://guest:****@127.0.0.1:5672//"]},
        "pools": [
            {"name": "quick", "up": True, "answering": True, "node": "quick@h",
             "queues": ["demo-quick"], "expected": ["demo-quick"]},
            {"name": "a-much-longer-pool-name", "up": False, "answering": False,
             "node": "a-much-longer-pool-name@h", "queues": [], "expected": ["slow"]},
        ],
        "queues": [{"name": "demo-quick", "ready": 0, "unacked": 0, "consumers": 1,
                    "error": None},
                   {"name": "a-queue-with-a-very-long-name-indeed", "ready": 12,
                    "unacked": 3, "consumers": 2, "error": None}],
        "beat": {"up": True},
        "flower": {"up": True, "url": "http://127.0.0.1:5555/", "detail": "auth required"},
        "processes": {"demo-worker-quick.service": {"state": "running", "pid": 41,
                                                    "since": "2026-11-30T11:00:00+00:00"},
                      "demo-beat.service": {"state": "stopped", "pid": 7, "since": None}},
    }
    lines = _text(report).splitlines()
    rows = [line for line in lines[1:] if line and not line.startswith(("queue", "demo-q",
                                                                        "a-queue"))]
    column = {line.index(word) for line in rows
              for word in ("running", "stopped", "DOWN") if f" {word} " in line}
    assert len(column) == 1, "\n".join(rows)  # every state starts in one column
    names = {line.index(name) for name in ("quick", "a-much-longer", "demo-beat")
             for line in rows if f" {name}" in line}
    assert len(names) == 1, "\n".join(rows)
    table = [line for line in lines if line.startswith(("queue", "demo-q", "a-queue"))]
    ends = {len(line) for line in table}
    assert len(ends) == 1, "\n".join(table)  # right-aligned numbers end in one column
