"""One launch per directory, and nothing a launch started goes unseen: a SIGKILLed
launch's services (orphans) are shown by status, stopped warmly by stop, and block a
second launch; two launches started together run one fleet; a launch whose services
all fail can be stopped; services create their files with the unit's UMask=0077."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import (
    Launch,
    cmdline,
    fresh_vhost,
    make_demo_site,
    run_crate_deploy,
    wait_for,
)

pytestmark = pytest.mark.slow


def _beats(state_dir: Path) -> list[int]:
    """Live beat processes of this site (by their --schedule= argument)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = cmdline(int(entry.name))
            except OSError:
                continue
            if f"--schedule={state_dir}/celerybeat-schedule" in argv:
                found.append(int(entry.name))
    return found


def test_a_killed_launch_leaves_orphans_that_status_shows_and_stop_stops(
        latest_venv: Path, tmp_path: Path) -> None:
    with fresh_vhost() as vhost:
        site = make_demo_site(tmp_path, vhost, latest_venv)
        launch = Launch(site)
        try:
            launch.start().wait_ready()
            pids = launch.pids()
            state = tmp_path / "state"
            wait_for(lambda: list(state.glob("celerybeat-schedule*")), 60, what="beat's file")
            # The units' UMask=0077 holds in a foreground launch too (flower.db keeps task
            # arguments; the schedule is beat's own).
            for path in state.iterdir():
                assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is readable"
            assert launch.proc is not None
            os.kill(launch.proc.pid, signal.SIGKILL)  # the launcher only: its services live on
            launch.proc.wait(30)
            assert all(launch.alive()), "the services died with their launch"

            status = run_crate_deploy("status", str(site.out))
            assert "orphaned" in status.stdout, status.stdout + status.stderr
            assert re.search(r"^beat\s+up$", status.stdout, re.MULTILINE), status.stdout

            again = run_crate_deploy("launch", str(site.out), "--timeout", "30", timeout=120)
            assert again.returncode == 1, again.stdout + again.stderr
            assert "still run" in again.stderr
            assert _beats(state) == [pids["demo-beat"]]  # no second beat

            stopped = run_crate_deploy("stop", str(site.out), timeout=300)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            assert "stopped" in stopped.stdout
            launch.assert_all_gone()
        finally:
            launch.kill()


def test_two_launches_started_together_run_one_fleet(latest_venv: Path, tmp_path: Path) -> None:
    with fresh_vhost() as vhost:
        site = make_demo_site(tmp_path, vhost, latest_venv)
        launches = [Launch(site, log=tmp_path / f"launch{i}.log") for i in range(2)]
        try:
            for launch in launches:
                launch.start()
            # One becomes ready; the other is refused at once.
            wait_for(lambda: any("ready in" in launch.log() for launch in launches)
                     and any(launch.proc is not None and launch.proc.poll() is not None
                             for launch in launches), 120, 0.5, what="one ready, one refused",
                     describe=lambda: "\n---\n".join(launch.tail() for launch in launches))
            refused = next(launch for launch in launches if launch.proc is not None
                           and launch.proc.poll() is not None)
            assert refused.proc is not None and refused.proc.returncode == 1
            assert ("launch" in refused.log() and "already" in refused.log()) or (
                "being launched" in refused.log()), refused.log()
            assert len(_beats(tmp_path / "state")) == 1
            running = next(launch for launch in launches if launch is not refused)
            running.remember()
            running.stop()
        finally:
            for launch in launches:
                launch.kill()


def test_a_launch_whose_services_all_fail_can_be_stopped(latest_venv: Path,
                                                         tmp_path: Path) -> None:
    with fresh_vhost() as vhost:
        site = make_demo_site(tmp_path, vhost, latest_venv)
        # Every service starts and dies at once, with nothing that names a certain cause
        # (a missing program would be refused before anything starts): Restart= goes on.
        (site.site_dir / "crashall.py").write_text("import os\n\nos._exit(1)\n")
        site.rerender(lambda data: data.update(app="crashall"))
        launch = Launch(site).start()
        try:
            wait_for(lambda: "exited with code 1; restarting" in launch.log(), 120,
                     what="the failed starts", describe=launch.tail)
            assert launch.proc is not None and launch.proc.poll() is None
            result = run_crate_deploy("stop", str(site.out), "--timeout", "60", timeout=120)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "asked launch" in result.stdout
            assert launch.proc.wait(60) != 0
        finally:
            launch.kill()


def test_stop_by_another_user_says_so_in_one_line(latest_venv: Path, tmp_path: Path) -> None:
    """Not a traceback: a clear line naming who may stop it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run stop as another user")
    with fresh_vhost() as vhost:
        site = make_demo_site(tmp_path, vhost, latest_venv)
        folders = {folder: folder.stat().st_mode for folder in [tmp_path, *tmp_path.parents]}
        try:
            for folder, mode in folders.items():
                folder.chmod(mode | 0o005)  # let nobody read the render
            with Launch(site):
                result = subprocess.run(
                    ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                     str(Path(sys.executable).parent / "crate-deploy"), "stop", str(site.out)],
                    capture_output=True, text=True, timeout=120, check=False)
        finally:
            for folder, mode in folders.items():
                folder.chmod(mode)
            assert result.returncode == 1, result.stdout + result.stderr
            assert "Traceback" not in result.stderr
            assert "as that user or as root" in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
