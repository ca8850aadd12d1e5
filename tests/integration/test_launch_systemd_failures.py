"""launch --systemd, logs and restart under a real systemd: a certain failure costs
seconds, with its cause, as in the foreground (tests/integration/test_launch_failures.py).

crate-deploy runs *inside* a systemd-nspawn container whose PID 1 is systemd 252
(tests/systemd_container.py), from this checkout (bound read-only at its own path, run
by the container's python3.11 with the dev venv's packages on PYTHONPATH); the demo
site is rendered here for the container's paths (venv /opt/crate-demo/venv, user
www-data, a root-only secrets file) and its output directory is bound at its own path.
So `launch --systemd` installs into the container's /etc/systemd/system, enables and
starts the units with the container's systemctl, and reads its journal.

Rows of issue 9's table: a misspelt `app:` (every service exits with
ModuleNotFoundError), a cron field Celery refuses (beat exits with ValueError), a crash
loop with no cause (systemd's start limit ends it), Flower's port held by another
process (found before anything starts). Each prints
`LAUNCH-SYSTEMD-FAIL|case|exit|seconds|last line` (run with -s): the time is reported,
not asserted. Then the operator commands on a fleet that came up: `logs` reads the
journal (and `logs -f` follows it until Ctrl-C), `restart` restarts one pool under
systemd (new main pid, answering again), and a restart into a broken application fails
in seconds with the cause.

Needs root, systemd-nspawn, the root of .ci/container-rootfs, and RabbitMQ; skips
without them (fails under CI).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_container_fleet import SECRETS_FILE, Fleet
from tests.rabbit import broker_problem, temporary_vhost
from tests.systemd_container import (
    APP_DIR,
    REPO_ROOT,
    Container,
    container_available,
    skip_or_fail,
)

pytestmark = pytest.mark.slow

PACKAGES = REPO_ROOT / ".venv" / "lib" / "python3.11" / "site-packages"
# This checkout and the dev venv's packages, run by the container's python3.11.
IN_CONTAINER = {"PYTHONPATH": f"{REPO_ROOT}:{PACKAGES}", "PYTHONDONTWRITEBYTECODE": "1"}
LAUNCH_TIMEOUT = 60  # the default: a failure must not wait it out
WORKERS = ("demo-worker-quick.service", "demo-worker-slow.service")
SERVICES = (*WORKERS, "demo-beat.service", "demo-flower.service")


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    reason = container_available() or broker_problem() or (
        None if PACKAGES.is_dir() else f"no dev venv packages at {PACKAGES}")
    if reason:
        skip_or_fail(reason)


@pytest.fixture
def vhost() -> Iterator[str]:
    with temporary_vhost("cd-sysfail") as name:
        yield name


class Inside:
    """A booted container with crate-deploy runnable in it, for one rendered Fleet."""

    def __init__(self, ct: Container, fleet: Fleet) -> None:
        self.ct, self.fleet = ct, fleet
        ct.write_file(SECRETS_FILE, fleet.secrets, mode=0o600)

    def crate_deploy(self, *args: str, timeout: float = 180) -> tuple[int, str, float]:
        """Run crate-deploy in the container: (exit status, stdout + stderr, seconds)."""
        started = time.monotonic()
        result = self.ct.run(["/usr/bin/python3", "-m", "crate_deploy", *args], check=False,
                             timeout=timeout, env=IN_CONTAINER)
        return result.returncode, result.stdout + result.stderr, time.monotonic() - started

    def launch(self, case: str) -> tuple[int, str, str]:
        """launch --systemd to its end: (exit status, last line, all it said); printed."""
        code, said, seconds = self.crate_deploy(
            "launch", "--systemd", str(self.fleet.out), "--timeout", str(LAUNCH_TIMEOUT))
        last = said.strip().splitlines()[-1] if said.strip() else ""
        print(f"LAUNCH-SYSTEMD-FAIL|{case}|exit {code}|{seconds:.1f}s|{last}")
        return code, last, said

    def state(self, unit: str) -> str:
        props = self.ct.unit_properties(unit, "ActiveState", "SubState")
        return f"{props['ActiveState']}/{props['SubState']}"


def boot(fleet: Fleet) -> Container:
    return Container(bind_ro=[(fleet.app_dir, APP_DIR), (REPO_ROOT, str(REPO_ROOT))],
                     bind=[(fleet.tmp, str(fleet.tmp))])


def describe(ct: Container) -> str:
    return "\n".join(f"--- {unit} ---\n{ct.journal(unit, lines=40)}" for unit in SERVICES)


def launch_fails_fast(fleet: Fleet, case: str, check: Callable[[Inside, str], None]) -> None:
    """Boot, launch --systemd the rendered fleet, and see it fail at once: non-zero, the
    verdict last (naming a unit), that unit's journal lines above it, the units stopped;
    then `check(inside, last line)`. The journals are printed when an assertion fails."""
    with boot(fleet) as ct:
        inside = Inside(ct, fleet)
        code, last, said = inside.launch(case)
        try:
            assert code != 0, said[-3000:]
            assert last.startswith("error: "), said[-3000:]
            # Every service imports the app: whichever exits first is named.
            assert re.search(r"demo-(worker-\w+|beat|flower)\.service failed before the "
                             "fleet was ready", last), said[-3000:]
            assert "not ready after" not in said and "journalctl" not in said, said[-3000:]
            service = last.split()[1]
            assert f"line(s) of {service}:" in said, said[-3000:]
            stopped = [line for line in said.splitlines() if line.startswith("stopped ")]
            assert stopped and service in stopped[0], said[-3000:]
            # Every unit this launch started is stopped, as a foreground launch stops its
            # fleet: none is left crash-looping.
            # (one systemd gave up on stays failed until the next launch resets it)
            states = {unit: inside.state(unit) for unit in SERVICES}
            assert set(states.values()) <= {"inactive/dead", "failed/failed"}, states
            check(inside, last)
        except AssertionError:
            print(describe(ct))
            raise


def test_misspelt_app_fails_in_seconds_under_systemd(tmp_path: Path, vhost: str) -> None:
    fleet = Fleet(tmp_path, vhost)
    fleet.render(lambda site: site.update({"app": "ncap"}))

    def names_the_module(inside: Inside, last: str) -> None:
        assert "ModuleNotFoundError: No module named 'ncap'" in last, last
        assert "cannot import ncap" in last, last

    launch_fails_fast(fleet, "misspelt app", names_the_module)


def test_cron_field_celery_refuses_fails_in_seconds_under_systemd(tmp_path: Path,
                                                                  vhost: str) -> None:
    fleet = Fleet(tmp_path, vhost)
    entry = {"name": "nightly", "task": "demoapp.tick", "cron": {"minute": "7", "hour": "3"}}

    def nightly(site: dict[str, Any]) -> None:
        site["beat"]["schedule"] = [entry]

    fleet.render(nightly)
    # Celery is the judge: a minute of 75 in the rendered config, as a hand edit would.
    config = fleet.out / "crate_deploy_celeryconfig.py"
    text = config.read_text(encoding="utf-8")
    edited = re.sub(r"(['\"]minute['\"]: ['\"])7(['\"])", r"\g<1>75\g<2>", text)
    assert edited != text, text
    config.write_text(edited, encoding="utf-8")

    def names_the_field(inside: Inside, last: str) -> None:
        assert "ValueError" in last and "75" in last, last
        assert "cron field is out of range" in last, last

    launch_fails_fast(fleet, "bad cron", names_the_field)


def test_a_crash_loop_ends_when_systemd_gives_up_and_a_fixed_launch_starts(
        tmp_path: Path, vhost: str) -> None:
    """Every service exits 1 with no traceback (nothing certain): systemd restarts them
    every RestartSec=5s until StartLimitBurst=5 marks one failed ("Start request repeated
    too quickly"), which ends the launch (before its 60 s timeout). Fixed, the next launch
    starts them and waits until they answer."""
    fleet = Fleet(tmp_path, vhost)
    fleet.render()
    app = fleet.app_dir / "demoapp.py"
    good = app.read_text(encoding="utf-8")
    app.write_text("import sys\nsys.exit(1)  # no traceback, no cause\n" + good,
                   encoding="utf-8")

    def systemd_gave_up(inside: Inside, last: str) -> None:
        assert ("systemd gave up on it (start limit hit: a crash loop; last exited with code "
                "1)") in last, last
        service = last.split()[1]
        assert inside.state(service) == "failed/failed", inside.state(service)
        app.write_text(good, encoding="utf-8")
        code, said, seconds = inside.crate_deploy("launch", "--systemd", str(fleet.out))
        print(f"LAUNCH-SYSTEMD|fixed after a crash loop|exit {code}|{seconds:.1f}s")
        assert code == 0 and "ready in" in said, said

    launch_fails_fast(fleet, "crash loop", systemd_gave_up)


def test_flower_port_in_use_fails_before_starting_under_systemd(tmp_path: Path,
                                                                vhost: str) -> None:
    fleet = Fleet(tmp_path, vhost)
    fleet.render()
    with boot(fleet) as ct, socket.socket() as squatter:
        # The container shares this host's network: a listener here holds its port.
        squatter.bind(("127.0.0.1", fleet.flower_port))
        squatter.listen(1)
        inside = Inside(ct, fleet)
        code, last, said = inside.launch("port in use")
        assert code != 0, said
        assert f"{fleet.flower_port}" in last and "in use" in last, said
        assert "Traceback" not in said, said
        # Refused before anything changed in systemd: nothing installed, nothing started.
        assert ct.run(["test", "-e", "/etc/systemd/system/demo.target"],
                      check=False).returncode != 0


def test_logs_and_restart_under_systemd(tmp_path: Path, vhost: str) -> None:
    fleet = Fleet(tmp_path, vhost)
    fleet.render()
    with boot(fleet) as ct:
        inside = Inside(ct, fleet)
        try:
            _logs_and_restart(inside, fleet)
        except AssertionError:
            print(describe(ct))
            raise


def _logs_and_restart(inside: Inside, fleet: Fleet) -> None:
    ct, out = inside.ct, str(fleet.out)
    code, said, seconds = inside.crate_deploy("launch", "--systemd", out)
    print(f"LAUNCH-SYSTEMD|healthy fleet|exit {code}|{seconds:.1f}s")
    assert code == 0 and "ready in" in said, said

    # logs: the journal of the named unit only (through the masker).
    code, said, _ = inside.crate_deploy("logs", "quick", out, "-n", "200")
    assert code == 0, said
    assert "quick@" in said and "ready." in said, said
    assert "demo-beat" not in said and fleet.flower_password not in said, said
    code, said, _ = inside.crate_deploy("logs", "flower", out, "-n", "200")
    assert code == 0 and "Visit me at http" in said, said
    # logs -f follows the journal: what systemd says of the unit while it runs comes
    # through, and Ctrl-C (SIGINT) ends it.
    follow = ct.run(["sh", "-c", f"(sleep 3; systemctl kill --kill-who=main --signal=SIGUSR1 "
                     f"{WORKERS[1]}) & "
                     f"timeout -s INT 8 /usr/bin/python3 -m crate_deploy logs -f slow {out} "
                     "-n 5"], check=False, timeout=60, env=IN_CONTAINER)
    assert follow.returncode == 124, follow  # ended by the SIGINT, not by itself
    assert "Traceback" not in follow.stderr, follow.stderr
    # SIGUSR1 to its main process makes a Celery worker dump its threads' stacks: the
    # dump arrives while logs follows (after the 5 lines it started with).
    assert "MainThread" in follow.stdout.split("\n", 5)[-1], follow.stdout

    # restart under systemd: a new main process, answering again.
    before = int(ct.unit_properties(WORKERS[0], "MainPID")["MainPID"])
    code, said, seconds = inside.crate_deploy("restart", "quick", out)
    print(f"RESTART-SYSTEMD|healthy pool|exit {code}|{seconds:.1f}s")
    assert code == 0, said
    assert "restarted demo-worker-quick (systemd)" in said and "ready in" in said, said
    after = int(ct.unit_properties(WORKERS[0], "MainPID")["MainPID"])
    assert after not in (0, before), (before, after)
    assert int(ct.unit_properties(WORKERS[1], "MainPID")["MainPID"]) > 0

    # restart into a broken application: the cause in seconds, not after a timeout.
    app = fleet.app_dir / "demoapp.py"
    app.write_text("import ncap  # a mistake\n" + app.read_text(encoding="utf-8"),
                   encoding="utf-8")
    code, said, seconds = inside.crate_deploy("restart", "quick", out)
    last = said.strip().splitlines()[-1]
    print(f"RESTART-SYSTEMD-FAIL|broken app|exit {code}|{seconds:.1f}s|{last}")
    assert code != 0, said
    assert "demo-worker-quick.service failed before the fleet was ready" in last, said
    assert "No module named 'ncap'" in last, said
    assert inside.state(WORKERS[0]).startswith(("inactive/", "failed/")), inside.state(WORKERS[0])
    assert last.startswith("error: "), said
