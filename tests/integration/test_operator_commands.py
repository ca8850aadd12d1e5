"""`crate-deploy logs`, `restart` and `launch --only` on a real foreground fleet."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (
    CRATE_DEPLOY,
    QUEUES,
    Launch,
    make_demo_site,
    node,
    run_crate_deploy,
    task_client,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_logs_restart_and_follow_on_a_foreground_launch(tmp_path: Path, vhost: str,
                                                        latest_venv: Path) -> None:
    site = make_demo_site(tmp_path, vhost, latest_venv)
    with task_client(site) as client, Launch(site) as launch:
        # The files a foreground launch writes: private, masked, one per service.
        logs = site.out / "logs"
        assert stat.S_IMODE(logs.stat().st_mode) == 0o700
        files = sorted(path.name for path in logs.iterdir())
        assert files == sorted(f"{name}.log" for name in launch.pids())
        for path in logs.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert site.flower_password not in path.read_text(encoding="utf-8")
        shown = run_crate_deploy("logs", "quick", str(site.out), "-n", "400")
        assert shown.returncode == 0, shown.stderr
        assert f"{node('quick')} ready." in shown.stdout
        assert "demo-worker-quick started (pid" in shown.stdout
        assert {line.split()[1] for line in shown.stdout.splitlines()} == {"demo-worker-quick"}

        # -f prints the last lines, then what comes next.
        follow = subprocess.Popen([str(CRATE_DEPLOY), "logs", "-f", str(site.out), "worker-quick",
                                   "-n", "1"], stdout=subprocess.PIPE, text=True)
        followed: list[str] = []
        reader = threading.Thread(target=lambda: followed.extend(follow.stdout or []),
                                  daemon=True)
        reader.start()
        try:
            wait_for(lambda: followed, 30, what="logs -f to print the last line")
            result = client.send("demoapp.quick", QUEUES["quick"], value=7)
            assert result.get(timeout=60)["value"] == 7
            wait_for(lambda: any(f"demoapp.quick[{result.id}] succeeded" in line
                                 for line in followed), 30, what="the followed log line",
                     describe=lambda: "".join(followed))
        finally:
            follow.terminate()
            follow.wait(10)

        # restart: warm (the running task finishes), one pool only, the launch goes on.
        pids = launch.pids()
        running = client.send("demoapp.slow", QUEUES["slow"], seconds=3, value=1)
        wait_for(lambda: client.active(QUEUES["slow"]), 30, what="the slow task to run")
        started = time.monotonic()
        restarted = run_crate_deploy("restart", str(site.out), "slow", timeout=120)
        print(f"restart took {time.monotonic() - started:.1f}s")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert f"restarted demo-worker-slow (pid {pids['demo-worker-slow']} -> " in \
            restarted.stdout
        assert "ready in" in restarted.stdout and f"{node('slow')} on demo-slow" in \
            restarted.stdout, restarted.stdout  # it waited until the pool answered
        assert node("quick") not in restarted.stdout
        done = running.get(timeout=30)  # (it names the host too)
        assert (done["value"], done["node"]) == (1, node("slow"))
        after = launch.pids()
        assert after["demo-worker-slow"] != pids["demo-worker-slow"]
        assert {k: v for k, v in after.items() if k != "demo-worker-slow"} == \
            {k: v for k, v in pids.items() if k != "demo-worker-slow"}
        assert "restarting as asked" in launch.log()
        assert launch.proc is not None and launch.proc.poll() is None


def test_launch_only_runs_and_waits_for_the_named_services(tmp_path: Path, vhost: str,
                                                           latest_venv: Path) -> None:
    site = make_demo_site(tmp_path, vhost, latest_venv)
    with Launch(site, args=("--only", "worker-quick", "--only", "demo-flower")) as launch:
        assert sorted(launch.pids()) == ["demo-flower", "demo-worker-quick"]
        ready = next(line for line in launch.log().splitlines() if "ready in" in line)
        assert node("quick") in ready and "Flower at" in ready
        assert node("slow") not in ready and "beat" not in ready
        unknown = run_crate_deploy("restart", "nope", str(site.out))
        assert unknown.returncode == 2 and "no service 'nope'" in unknown.stderr
        not_running = run_crate_deploy("restart", "beat", str(site.out))
        assert not_running.returncode == 1 and "--only" in not_running.stderr
    assert not (site.out / ".crate-deploy-restart.json").exists()
    assert os.path.exists(site.out / "logs" / "demo-worker-quick.log")
    assert not os.path.exists(site.out / "logs" / "demo-worker-slow.log")
