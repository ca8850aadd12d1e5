"""Tests for crate_deploy.run.supervise, with real processes.

Every process a test starts is checked to be gone when the test ends: the
`fleets` fixture stops what is still running and then waits for every main
pid (and every child pid a program reports) to disappear.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crate_deploy.run.supervise import (
    LinePrinter,
    ProcessSpec,
    Supervisor,
    SupervisorResult,
    classify_exit,
    describe_returncode,
    process_spec_from_service,
    should_restart,
    stop_on_signals,
)
from crate_deploy.systemd.units import ServiceSpec, UnitError

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
STAMP = r"\d\d:\d\d:\d\d"

# Finishes its current "task" (one second) on SIGTERM, then exits 0, like Celery's warm shutdown.
# Handlers only set a flag: printing from one could interrupt a print in progress.
GRACEFUL = """
    import signal, time
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    print("ready", flush=True)
    while not stop:
        time.sleep(0.02)
    print("finishing task", flush=True)
    time.sleep(1.0)
    print("task done", flush=True)
"""
# A main process with one child (argv[1] is the child's program, argv[2] its marker file).
FAMILY = """
    import signal, subprocess, sys, time
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    child = subprocess.Popen([sys.executable, "-I", "-c", sys.argv[1], sys.argv[2]])
    print(f"child {child.pid}", flush=True)
    print("ready", flush=True)
    while not stop:
        time.sleep(0.02)
    print("main got SIGTERM", flush=True)
    time.sleep(0.3)  # long enough for a wrongly signalled child to report it
"""
# Dies noisily, leaving a marker file, if SIGTERM ever reaches it.
NOISY_CHILD = """
    import pathlib, signal, sys, time
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    print("child ready", flush=True)
    while not stop:
        time.sleep(0.02)
    pathlib.Path(sys.argv[1]).write_text("SIGTERM")
    print("CHILD GOT SIGTERM", flush=True)
    sys.exit(1)
"""
STUBBORN = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
"""
SLEEPER = """
    import time
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
"""
CRASH = """
    print("boom: cannot reach the broker", flush=True)
    raise SystemExit(3)
"""


def program(script: str, *args: str) -> list[str]:
    return [sys.executable, "-I", "-c", textwrap.dedent(script), *args]


def spec(name: str, script: str, *args: str, **settings: Any) -> ProcessSpec:
    return ProcessSpec(name=name, argv=program(script, *args), env=dict(ENV), **settings)


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie that init has not reaped yet is as gone as a process gets.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def wait_until_gone(pid: int, timeout: float = 5.0) -> bool:
    return wait_until(lambda: is_gone(pid), timeout)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class CapturedOutput:
    """A thread-safe output sink the tests can wait on."""

    def __init__(self, tty: bool = False) -> None:
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._tty = tty

    def write(self, text: str) -> int:
        with self._changed:
            self._lines.extend(text.splitlines())
            self._changed.notify_all()
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self._tty

    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        def find() -> re.Match[str] | None:
            return next((m for line in self._lines if (m := re.search(pattern, line))), None)

        with self._changed:
            if not self._changed.wait_for(lambda: find() is not None, timeout):
                pytest.fail(f"no output line matches {pattern!r}:\n" + "\n".join(self._lines))
            match = find()
            assert match is not None
            return match


class Fleet:
    """Runs a Supervisor in a background thread and records what it reports."""

    def __init__(self, specs: list[ProcessSpec], **options: Any) -> None:
        self.output = options.pop("output", None) or CapturedOutput()
        self.starts: list[tuple[str, int, float]] = []
        self.exits: list[tuple[str, int, bool]] = []
        self._events = threading.Condition()
        self.supervisor = Supervisor(
            specs, output=self.output, on_start=self._started, on_exit=self._exited, **options
        )
        self.result: SupervisorResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self.supervisor.run()
        except BaseException as error:
            self.error = error

    def _started(self, name: str, pid: int) -> None:
        with self._events:
            self.starts.append((name, pid, time.monotonic()))
            self._events.notify_all()

    def _exited(self, name: str, returncode: int, will_restart: bool) -> None:
        with self._events:
            self.exits.append((name, returncode, will_restart))
            self._events.notify_all()

    def wait_for_starts(self, count: int, timeout: float = 10.0) -> None:
        with self._events:
            assert self._events.wait_for(lambda: len(self.starts) >= count, timeout)

    def wait_for_exits(self, count: int, timeout: float = 10.0) -> None:
        with self._events:
            assert self._events.wait_for(lambda: len(self.exits) >= count, timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def finish(self, timeout: float = 15.0) -> SupervisorResult:
        self._thread.join(timeout)
        assert not self.alive, "the supervisor did not finish"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def stop(self) -> SupervisorResult:
        self.supervisor.request_stop()
        return self.finish()

    def every_pid(self) -> list[int]:
        reported = [re.search(r"\| child (\d+)$", line) for line in self.output.lines()]
        return [pid for _, pid, _ in self.starts] + [int(m.group(1)) for m in reported if m]


@pytest.fixture
def fleets() -> Iterator[Callable[..., Fleet]]:
    started: list[Fleet] = []

    def start(*specs: ProcessSpec, **options: Any) -> Fleet:
        fleet = Fleet(list(specs), **options)
        started.append(fleet)
        return fleet

    yield start
    for fleet in started:
        if fleet.alive:  # the test failed midway: stop at once
            fleet.supervisor.request_stop()
            fleet.supervisor.request_stop()
            fleet.finish()
        leftovers = [pid for pid in fleet.every_pid() if not wait_until_gone(pid)]
        assert not leftovers, f"processes left running: {leftovers}"


# --- stopping -----------------------------------------------------------------------


def test_graceful_stop_lets_the_current_task_finish(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(spec("worker", GRACEFUL, timeout_stop_sec=10))
    fleet.output.wait_for(r"worker \| ready")
    began = time.monotonic()
    result = fleet.stop()
    assert time.monotonic() - began >= 1.0
    assert result == SupervisorResult(clean=True, exit_statuses={"worker": 0})
    assert fleet.exits == [("worker", 0, False)]
    lines = fleet.output.lines()
    assert any(re.fullmatch(rf"{STAMP} worker \| task done", line) for line in lines)
    assert any(f"stopping worker: SIGTERM to pid {fleet.starts[0][1]}" in line for line in lines)


def test_stop_signal_reaches_only_the_main_pid(
    fleets: Callable[..., Fleet], tmp_path: Path
) -> None:
    marker = tmp_path / "child-got-sigterm"
    fleet = fleets(spec("worker", FAMILY, textwrap.dedent(NOISY_CHILD), str(marker)))
    fleet.output.wait_for(r"worker \| child ready")
    fleet.output.wait_for(r"worker \| ready")
    child_pid = int(fleet.output.wait_for(r"\| child (\d+)$").group(1))
    result = fleet.stop()
    assert result == SupervisorResult(clean=True, exit_statuses={"worker": 0})
    assert not marker.exists()
    assert not any("CHILD GOT SIGTERM" in line for line in fleet.output.lines())
    # The child outlived its parent, so it was SIGKILLed with what was left of the group.
    assert wait_until_gone(child_pid)


def test_control_group_mode_signals_the_whole_group(
    fleets: Callable[..., Fleet], tmp_path: Path
) -> None:
    marker = tmp_path / "child-got-sigterm"
    worker = spec("worker", FAMILY, textwrap.dedent(NOISY_CHILD), str(marker))
    worker.kill_mode = "control-group"
    fleet = fleets(worker)
    fleet.output.wait_for(r"worker \| child ready")
    fleet.output.wait_for(r"worker \| ready")
    assert fleet.stop().clean
    assert marker.read_text() == "SIGTERM"


def test_sigkill_after_timeout_stop_sec(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(spec("stubborn", STUBBORN, timeout_stop_sec=0.5))
    fleet.output.wait_for(r"stubborn \| ready")
    began = time.monotonic()
    result = fleet.stop()
    assert 0.5 <= time.monotonic() - began < 5
    assert result == SupervisorResult(
        clean=False,
        exit_statuses={"stubborn": -signal.SIGKILL},
        killed_after_timeout=("stubborn",),
    )
    fleet.output.wait_for(r"stubborn still running 0.5s after the stop signal")


def test_second_stop_request_kills_at_once(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(spec("stubborn", STUBBORN, timeout_stop_sec=60))
    fleet.output.wait_for(r"stubborn \| ready")
    fleet.supervisor.request_stop()
    fleet.output.wait_for("stopping stubborn: SIGTERM")
    began = time.monotonic()
    result = fleet.stop()
    assert time.monotonic() - began < 5
    assert result.exit_statuses == {"stubborn": -signal.SIGKILL}
    assert result.killed_after_timeout == ()
    assert not result.clean


def test_stop_requested_before_run_starts_nothing() -> None:
    supervisor = Supervisor([spec("worker", SLEEPER)], output=CapturedOutput())
    supervisor.request_stop()
    assert supervisor.run() == SupervisorResult(clean=True, exit_statuses={"worker": None})
    with pytest.raises(RuntimeError, match="only be called once"):
        supervisor.run()


def test_stop_on_signals_turns_sigterm_into_a_graceful_stop() -> None:
    output = CapturedOutput()
    supervisor = Supervisor([spec("worker", SLEEPER)], output=output)

    def send_sigterm_when_ready() -> None:
        output.wait_for(r"worker \| ready")
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    sender = threading.Thread(target=send_sigterm_when_ready)
    sender.start()
    with stop_on_signals(supervisor):
        result = supervisor.run()
    sender.join()
    assert result == SupervisorResult(clean=True, exit_statuses={"worker": -signal.SIGTERM})
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_exception_in_run_kills_everything() -> None:
    pids: list[int] = []

    def explode(name: str, pid: int) -> None:
        pids.append(pid)
        raise RuntimeError("hook failed")

    # Silent, so that only our SIGKILL can end it (not a write to a closed pipe).
    silent = spec("worker", "import time; time.sleep(30)")
    supervisor = Supervisor([silent], output=CapturedOutput(), on_start=explode)
    try:
        with pytest.raises(RuntimeError, match="hook failed"):
            supervisor.run()
        assert wait_until_gone(pids[0])
    finally:
        for pid in pids:
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)


# --- restarting ---------------------------------------------------------------------


def test_a_killed_process_is_restarted(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(spec("worker", SLEEPER, restart="on-failure", restart_sec=0.05))
    fleet.wait_for_starts(1)
    first = fleet.supervisor.pids()["worker"]
    os.kill(first, signal.SIGKILL)
    fleet.wait_for_starts(2)
    second = fleet.supervisor.pids()["worker"]
    assert second != first
    assert fleet.exits == [("worker", -signal.SIGKILL, True)]
    fleet.output.wait_for(r"worker was killed by SIGKILL; restarting in 0.1s")
    assert fleet.stop() == SupervisorResult(clean=True, exit_statuses={"worker": -signal.SIGTERM})


def test_crash_loop_stops_everything_and_reports(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(
        spec("crasher", CRASH, restart="on-failure", restart_sec=0.1, start_limit_burst=4),
        spec("bystander", SLEEPER),
    )
    result = fleet.finish()  # no stop request: the crash loop ends the run
    crash_loop = result.crash_loop
    assert crash_loop is not None
    assert (crash_loop.name, crash_loop.returncode, crash_loop.starts) == ("crasher", 3, 4)
    assert "boom: cannot reach the broker" in crash_loop.last_lines
    assert crash_loop.describe() == "crasher exited with code 3 after 4 starts within 10s"
    assert result.exit_statuses == {"crasher": 3, "bystander": -signal.SIGTERM}
    assert not result.clean
    crasher_exits = [exit for exit in fleet.exits if exit[0] == "crasher"]
    assert crasher_exits == [("crasher", 3, True)] * 3 + [("crasher", 3, False)]
    times = [at for name, _, at in fleet.starts if name == "crasher"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= 0.1 for gap in gaps), gaps


def test_every_restart_waits_restart_sec_as_the_unit_says_no_backoff(
        fleets: Callable[..., Fleet]) -> None:
    crasher = spec("crasher", CRASH, restart="always", restart_sec=0.3, start_limit_burst=5)
    fleet = fleets(crasher)
    assert fleet.finish().crash_loop is not None
    restarts = [line for line in fleet.output.lines() if "; restarting in" in line]
    assert len(restarts) == 4 and all(line.endswith("restarting in 0.3s") for line in restarts)
    times = [at for _, _, at in fleet.starts]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # A doubling backoff would make the last gap 2.4 s; RestartSec= keeps each near 0.3 s.
    assert len(gaps) == 4 and all(0.3 <= gap < 1.2 for gap in gaps), gaps


def test_restart_always_restarts_clean_exits(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(spec("ticker", "print('tick')", restart="always", restart_sec=0.05))
    fleet.wait_for_starts(3)
    assert fleet.exits[:2] == [("ticker", 0, True)] * 2
    assert fleet.stop().crash_loop is None


def test_a_process_that_will_not_restart_stays_down(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(spec("once", "print('done')"), spec("server", SLEEPER))
    fleet.wait_for_exits(1)
    assert fleet.exits == [("once", 0, False)]
    time.sleep(0.2)
    assert fleet.alive and list(fleet.supervisor.pids()) == ["server"]
    result = fleet.stop()
    assert result.exit_statuses == {"once": 0, "server": -signal.SIGTERM}


def test_spawn_failures_get_systemds_exit_statuses(
    fleets: Callable[..., Fleet], tmp_path: Path
) -> None:
    missing = ProcessSpec("missing", [str(tmp_path / "no-such-celery")], dict(ENV))
    homeless = spec("homeless", SLEEPER, cwd=tmp_path / "no-such-dir")
    fleet = fleets(missing, homeless)
    result = fleet.finish()  # nothing runs and nothing restarts, so the run ends
    assert result.exit_statuses == {"missing": 203, "homeless": 200}
    assert not result.clean
    assert fleet.starts == []
    fleet.output.wait_for(r"system +\| missing failed to start: \[Errno 2\]")
    fleet.output.wait_for(r"system +\| missing exited with code 203$")


def test_spawn_failure_is_in_the_last_lines(fleets: Callable[..., Fleet], tmp_path: Path) -> None:
    missing = ProcessSpec("missing", [str(tmp_path / "celery")], dict(ENV), restart="always",
                          restart_sec=0.01, start_limit_burst=2)  # fmt: skip
    fleet = fleets(missing)
    crash_loop = fleet.finish().crash_loop
    assert crash_loop is not None and crash_loop.returncode == 203
    assert crash_loop.last_lines[-1].startswith("failed to start: [Errno 2]")
    assert fleet.supervisor.last_lines("missing") == list(crash_loop.last_lines)


# --- output -------------------------------------------------------------------------

CHATTY = """
    import sys, time
    sys.stdout.write("par"); sys.stdout.flush()
    time.sleep(0.2)
    sys.stdout.write("tial\\n"); sys.stdout.flush()
    print("to stderr", file=sys.stderr, flush=True)
    sys.stdout.write("no newline at the end"); sys.stdout.flush()
"""


def test_output_lines_are_whole_prefixed_and_padded(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(spec("a", CHATTY), spec("longer-name", "print('hello')"))
    assert fleet.finish().clean
    lines = fleet.output.lines()
    for text in ("partial", "to stderr", "no newline at the end"):
        assert any(re.fullmatch(rf"{STAMP} a {{11}}\| {text}", line) for line in lines), lines
    assert any(re.fullmatch(rf"{STAMP} longer-name \| hello", line) for line in lines)
    assert any(re.fullmatch(rf"{STAMP} system {{6}}\| a started \(pid \d+\)", x) for x in lines)
    assert not any("\x1b[" in line for line in lines)


def test_output_is_coloured_on_a_terminal(fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(spec("web", "print('hi')"), output=CapturedOutput(tty=True))
    fleet.finish()
    lines = fleet.output.lines()
    assert any(re.fullmatch(rf"\x1b\[36m{STAMP} web    \|\x1b\[0m hi", line) for line in lines)
    assert all(line.startswith("\x1b[") for line in lines if "| hi" in line)
    assert not any(line.startswith("\x1b[") for line in lines if "system |" in line)


def test_a_shared_printer_aligns_the_callers_lines(fleets: Callable[..., Fleet]) -> None:
    output = CapturedOutput()
    printer = LinePrinter(output, ["web", "crate-deploy"])
    fleet = fleets(spec("web", "print('hi')"), output=output, printer=printer)
    printer.line("crate-deploy", "launching")
    fleet.finish()
    lines = output.lines()
    assert any(re.fullmatch(rf"{STAMP} web {{10}}\| hi", line) for line in lines), lines
    assert any(re.fullmatch(rf"{STAMP} crate-deploy \| launching", line) for line in lines)


# --- policies and conversions -------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "kind"),
    [(0, "clean"), (1, "exit-code"), (-signal.SIGTERM, "clean"), (-signal.SIGINT, "clean"),
     (-signal.SIGHUP, "clean"), (-signal.SIGPIPE, "clean"), (-signal.SIGKILL, "signal"),
     (-signal.SIGSEGV, "signal")],
)  # fmt: skip
def test_classify_exit(returncode: int, kind: str) -> None:
    assert classify_exit(ProcessSpec("w", ["x"], {}), returncode) == kind
    assert classify_exit(ProcessSpec("w", ["x"], {}, ignore_failure=True), returncode) == "clean"


@pytest.mark.parametrize(
    ("policy", "after_clean", "after_exit_code", "after_signal"),
    [
        ("no", False, False, False),
        ("always", True, True, True),
        ("on-success", True, False, False),
        ("on-failure", False, True, True),
        ("on-abnormal", False, False, True),
        ("on-abort", False, False, True),
        ("on-watchdog", False, False, False),
    ],
)
def test_should_restart_follows_systemds_table(
    policy: Any, after_clean: bool, after_exit_code: bool, after_signal: bool
) -> None:
    assert should_restart(policy, "clean") is after_clean
    assert should_restart(policy, "exit-code") is after_exit_code
    assert should_restart(policy, "signal") is after_signal




def test_describe_returncode() -> None:
    assert describe_returncode(3) == "exited with code 3"
    assert describe_returncode(-9) == "was killed by SIGKILL"


def test_process_spec_from_service() -> None:
    service = ServiceSpec(
        name="worker", argv=["/bin/celery", "worker"], environment={"A": "1"},
        restart="on-failure", restart_sec=2, timeout_stop_sec=600, kill_signal=signal.SIGINT,
        kill_mode="mixed", start_limit_burst=3, start_limit_interval_sec=60, ignore_failure=True,
    )  # fmt: skip
    assert process_spec_from_service(service) == ProcessSpec(
        name="worker", argv=["/bin/celery", "worker"], env={"A": "1"}, cwd=Path("/"),
        restart="on-failure", restart_sec=2, timeout_stop_sec=600, kill_signal=signal.SIGINT,
        start_limit_burst=3, start_limit_interval_sec=60, kill_mode="mixed", ignore_failure=True,
    )  # fmt: skip
    cwd = process_spec_from_service(ServiceSpec("b", ["/x"], {}, working_directory=Path("/srv")))
    assert cwd.cwd == Path("/srv") and cwd.kill_mode == "control-group"
    with pytest.raises(UnitError, match="KillMode=process leaves processes behind"):
        process_spec_from_service(ServiceSpec("w", ["/x"], {}, kill_mode="process"))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can switch users")
def test_a_unit_user_is_switched_to_when_running_as_root(tmp_path: Path) -> None:
    """User=/Group= apply as systemd applies them: the process runs as that account."""
    from io import StringIO

    from crate_deploy.run.supervise import ProcessSpec, Supervisor

    out = StringIO()
    # /bin/sh, not this Python: pyenv keeps it under /root, which nobody may not enter.
    spec = ProcessSpec("who", ["/bin/sh", "-c", 'echo "$(id -u) $(id -g)"'], env={},
                       cwd=Path("/"), user="nobody", group="nogroup")
    result = Supervisor([spec], output=out).run()
    assert result.exit_statuses == {"who": 0}
    assert "65534 65534" in out.getvalue()


def test_request_restart_is_warm_and_starts_again_whatever_restart_says(
        fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(spec("worker", GRACEFUL, restart="no", start_limit_burst=1),
                   spec("bystander", SLEEPER))
    fleet.output.wait_for(r"worker +\| ready")
    first = fleet.supervisor.pids()["worker"]
    bystander = fleet.supervisor.pids()["bystander"]
    fleet.supervisor.request_restart(["worker", "no-such-process"])
    fleet.output.wait_for(r"worker +\| task done")  # the running "task" finished first
    fleet.output.wait_for(r"worker exited with code 0; restarting as asked")
    fleet.wait_for_starts(3)
    assert fleet.supervisor.pids()["worker"] != first
    assert fleet.supervisor.pids()["bystander"] == bystander  # only the one asked for
    assert fleet.exits == [("worker", 0, True)]
    result = fleet.stop()  # a restart asked for is no crash loop, even with a burst of 1
    assert result.crash_loop is None and result.clean
