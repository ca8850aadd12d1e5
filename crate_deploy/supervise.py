"""Run a fleet in the foreground with systemd's restart and stop semantics.

Each process runs in its own session (so a Ctrl-C in our terminal reaches only
us), with stdout and stderr merged into one pipe whose lines are printed as
`HH:MM:SS name | line`.  Stopping follows KillMode=mixed: the stop signal goes
to the main pid only (Celery's prefork children must finish their tasks under
their parent's control), and after TimeoutStopSec= the whole process group is
SIGKILLed.  Whatever is left of a group once its main process is gone is
SIGKILLed too, as systemd does, so nothing outlives the supervisor.  Children
that leave the group with setsid() escape this; systemd's cgroups would not
let them, a process group is the closest a foreground run gets.
"""

from __future__ import annotations

import contextlib
import math
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Literal, Protocol

from crate_deploy.units import RestartPolicy, ServiceSpec, UnitError

SYSTEM_NAME = "system"
TAIL_LINES = 40
BACKOFF_CAP_SEC = 30.0
STABLE_AFTER_SEC = 10.0  # a run this long resets the backoff
EXIT_CHDIR = 200  # systemd's status when WorkingDirectory= cannot be entered
EXIT_EXEC = 203  # systemd's status when the command cannot be executed
CLEAN_SIGNALS = frozenset(
    int(s) for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)
)
_MAX_LINE_BYTES = 64 * 1024  # print a runaway line without newline rather than hoard it
_READ_BYTES = 64 * 1024
_DRAIN_SEC = 0.5  # how long to wait for the last output once everything has exited
_POLL_SEC = 0.1  # exit polling when the kernel offers no pidfd
_IDLE_SEC = 1.0
_PALETTE = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")

KillMode = Literal["mixed", "control-group"]
ExitKind = Literal["clean", "exit-code", "signal"]
# systemd.service(5), Restart=: which kinds of exit each policy restarts after.
_RESTART_AFTER: dict[str, frozenset[ExitKind]] = {
    "no": frozenset(),
    "always": frozenset(("clean", "exit-code", "signal")),
    "on-success": frozenset(("clean",)),
    "on-failure": frozenset(("exit-code", "signal")),
    "on-abnormal": frozenset(("signal",)),
    "on-abort": frozenset(("signal",)),
    "on-watchdog": frozenset(),  # we run no watchdog
}


@dataclass
class ProcessSpec:
    """One supervised process; process_spec_from_service() builds it from a unit."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path | None = None  # None: the supervisor's own working directory
    restart: RestartPolicy = "no"
    restart_sec: float = 0.1
    timeout_stop_sec: float = 90.0  # math.inf: wait forever
    kill_signal: int = int(signal.SIGTERM)
    start_limit_burst: int = 5  # 0 disables the start limit
    start_limit_interval_sec: float = 10.0
    kill_mode: KillMode = "mixed"
    ignore_failure: bool = False  # ExecStart=-...: a failing exit counts as clean


def process_spec_from_service(service: ServiceSpec) -> ProcessSpec:
    if service.kill_mode not in ("mixed", "control-group"):
        raise UnitError(
            f"{service.name}: KillMode={service.kill_mode} leaves processes behind after a stop;"
            " crate-deploy launch supports mixed and control-group"
        )
    return ProcessSpec(
        name=service.name,
        argv=list(service.argv),
        env=dict(service.environment),
        cwd=service.working_directory or Path("/"),  # where systemd starts a system service
        restart=service.restart,
        restart_sec=service.restart_sec,
        timeout_stop_sec=service.timeout_stop_sec,
        kill_signal=service.kill_signal,
        start_limit_burst=service.start_limit_burst,
        start_limit_interval_sec=service.start_limit_interval_sec,
        kill_mode="mixed" if service.kill_mode == "mixed" else "control-group",
        ignore_failure=service.ignore_failure,
    )


def classify_exit(spec: ProcessSpec, returncode: int) -> ExitKind:
    """Sort an exit (a Popen returncode: negative means killed) for the Restart= table."""
    if spec.ignore_failure or returncode == 0:
        return "clean"
    if returncode > 0:
        return "exit-code"
    return "clean" if -returncode in CLEAN_SIGNALS else "signal"


def should_restart(policy: RestartPolicy, kind: ExitKind) -> bool:
    return kind in _RESTART_AFTER[policy]


def restart_delay(restart_sec: float, quick_exits: int, cap: float = BACKOFF_CAP_SEC) -> float:
    """RestartSec= doubled for each quick exit in a row, up to the cap (or RestartSec=)."""
    return min(restart_sec * 2.0 ** min(quick_exits, 32), max(cap, restart_sec))


def describe_returncode(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    return f"was killed by {_signal_name(-returncode)}"


@dataclass(frozen=True)
class CrashLoop:
    """A process that hit its start limit (systemd: "start request repeated too quickly")."""

    name: str
    returncode: int
    starts: int
    interval_sec: float
    last_lines: tuple[str, ...]

    def describe(self) -> str:
        return (
            f"{self.name} {describe_returncode(self.returncode)} after {self.starts} starts"
            f" within {self.interval_sec:g}s"
        )


@dataclass(frozen=True)
class SupervisorResult:
    clean: bool  # no crash loop, no stop timeout, and every last exit clean by systemd's rules
    exit_statuses: dict[str, int | None]  # last returncode of each process; None: never ran
    crash_loop: CrashLoop | None = None
    killed_after_timeout: tuple[str, ...] = ()


class TextSink(Protocol):
    def write(self, text: str, /) -> object: ...
    def flush(self) -> object: ...


class LinePrinter:
    """Prints whole `HH:MM:SS name | text` lines, one write each, under one lock."""

    def __init__(self, sink: TextSink, names: Iterable[str], colour: bool | None = None) -> None:
        names = list(names)
        self._sink = sink
        self._lock = threading.Lock()
        self._width = max(len(name) for name in [*names, SYSTEM_NAME])
        if colour is None:
            isatty = getattr(sink, "isatty", None)
            colour = bool(isatty and isatty())
        palette = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}
        self._colours = palette if colour else {}

    def line(self, name: str, text: str) -> None:
        prefix = f"{time.strftime('%H:%M:%S')} {name.ljust(self._width)} |"
        if name in self._colours:
            prefix = f"\x1b[{self._colours[name]}m{prefix}\x1b[0m"
        with self._lock:
            self._sink.write(f"{prefix} {text}\n")
            self._sink.flush()


@dataclass
class _StartLimit:
    """systemd's start rate limit: at most `burst` starts in a window of `interval`."""

    burst: int
    interval: float
    window_start: float = -math.inf
    count: int = 0

    def _window_open(self, at: float) -> bool:
        return at - self.window_start <= self.interval

    def allows(self, at: float) -> bool:
        disabled = self.burst <= 0 or self.interval <= 0
        return disabled or not self._window_open(at) or self.count < self.burst

    def record(self, at: float) -> None:
        if not self._window_open(at):
            self.window_start, self.count = at, 0
        self.count += 1


@dataclass
class _Child:
    spec: ProcessSpec
    limit: _StartLimit
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    popen: subprocess.Popen[bytes] | None = None
    pidfd: int | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    restart_at: float | None = None
    stop_deadline: float | None = None
    returncode: int | None = None
    killed_after_timeout: bool = False


@dataclass
class _Reader:
    """One run's output pipe; it outlives the run while leftover children hold it open."""

    child: _Child
    pipe: IO[bytes]
    pending: bytearray = field(default_factory=bytearray)


class Supervisor:
    """Starts, restarts and stops a fleet; run() blocks until all of it has stopped."""

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        *,
        output: TextSink | None = None,
        colour: bool | None = None,
        printer: LinePrinter | None = None,  # share the caller's: one lock, one column width
        on_start: Callable[[str, int], None] | None = None,
        on_exit: Callable[[str, int, bool], None] | None = None,
        backoff_cap_sec: float = BACKOFF_CAP_SEC,
        stable_after_sec: float = STABLE_AFTER_SEC,
    ) -> None:
        # The wake-up pipe lives as long as we do, so request_stop() never writes to a
        # descriptor that was closed and reused meanwhile.
        self._wake_read, self._wake_write = os.pipe()
        for fd in (self._wake_read, self._wake_write):
            os.set_blocking(fd, False)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"process names must be unique: {names}")
        self._children = [
            _Child(spec, _StartLimit(spec.start_limit_burst, spec.start_limit_interval_sec))
            for spec in specs
        ]
        sink = output if output is not None else sys.stdout
        self._printer = printer if printer is not None else LinePrinter(sink, names, colour)
        self._on_start, self._on_exit = on_start, on_exit
        self._backoff_cap, self._stable_after = backoff_cap_sec, stable_after_sec
        self._stop_requests = 0  # bumped by request_stop(), perhaps inside a signal handler
        self._stops_handled = 0
        self._stopping = False
        self._crash_loop: CrashLoop | None = None
        self._selector: selectors.BaseSelector = selectors.DefaultSelector()
        self._readers: list[_Reader] = []
        self._ran = False

    def __del__(self) -> None:
        for fd in (getattr(self, "_wake_read", -1), getattr(self, "_wake_write", -1)):
            with contextlib.suppress(OSError):
                os.close(fd)

    # --- the public surface -------------------------------------------------------

    def request_stop(self) -> None:
        """Stop everything; a second call SIGKILLs at once.

        Safe in a signal handler and from other threads: it only bumps a counter
        and writes a byte to a pipe (no lock, no printing).
        """
        self._stop_requests += 1
        with contextlib.suppress(OSError):  # a full pipe already wakes run()
            os.write(self._wake_write, b"\0")

    def pids(self) -> dict[str, int]:
        """The main pid of each process running now (safe from other threads)."""
        running = {}
        for child in list(self._children):
            popen = child.popen
            if popen is not None:
                running[child.spec.name] = popen.pid
        return running

    def last_lines(self, name: str) -> list[str]:
        """The last TAIL_LINES lines a process printed, for error reports."""
        for child in self._children:
            if child.spec.name == name:
                return list(child.tail)
        raise KeyError(name)

    def run(self) -> SupervisorResult:
        """Supervise until everything has stopped.

        That is after request_stop(), after a crash loop, or once no process is
        left running or waiting to restart.
        """
        if self._ran:
            raise RuntimeError("Supervisor.run() can only be called once")
        self._ran = True
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        try:
            self._supervise()
        except BaseException:
            self._kill_everything()
            raise
        finally:
            for reader in list(self._readers):
                self._close_reader(reader)
            self._selector.close()
        return self._result()

    # --- the loop -----------------------------------------------------------------

    def _supervise(self) -> None:
        self._handle_stop_requests()
        for child in self._children:
            if not self._stopping:
                self._start(child)
        while any(c.popen is not None or c.restart_at is not None for c in self._children):
            self._wait(self._timeout())
            self._handle_stop_requests()
            self._reap_exited()
            self._fire_timers()
        deadline = time.monotonic() + _DRAIN_SEC
        while self._readers and time.monotonic() < deadline:
            self._wait(deadline - time.monotonic())

    def _timeout(self) -> float:
        now = time.monotonic()
        without_pidfd = any(c.popen is not None and c.pidfd is None for c in self._children)
        timeouts = [_POLL_SEC if without_pidfd else _IDLE_SEC]
        for child in self._children:
            timeouts += [t - now for t in (child.restart_at, child.stop_deadline) if t is not None]
        return max(0.0, min(timeouts))

    def _wait(self, timeout: float) -> None:
        for key, _ in self._selector.select(max(0.0, timeout)):
            if isinstance(key.data, _Reader):
                self._read(key.data)
            elif key.fd == self._wake_read:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_read, 4096)
            # else a pidfd: its process exited, and _reap_exited() collects it

    def _handle_stop_requests(self) -> None:
        while self._stops_handled < self._stop_requests:
            self._stops_handled += 1
            if self._stopping:
                self._kill_all_now()
            else:
                self._begin_stop()

    def _fire_timers(self) -> None:
        now = time.monotonic()
        for child in self._children:
            if child.restart_at is not None and child.restart_at <= now:
                child.restart_at = None
                self._start(child)
            deadline = child.stop_deadline
            if child.popen is not None and deadline is not None and deadline <= now:
                child.stop_deadline = None
                child.killed_after_timeout = True
                self._system(
                    f"{child.spec.name} still running {child.spec.timeout_stop_sec:g}s after"
                    " the stop signal: SIGKILL to its process group"
                )
                _signal_group(child.popen.pid, signal.SIGKILL)

    # --- starting -------------------------------------------------------------------

    def _start(self, child: _Child) -> None:
        spec = child.spec
        child.started_at = time.monotonic()
        child.limit.record(child.started_at)
        try:
            popen = subprocess.Popen(
                spec.argv,
                env=spec.env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            self._spawn_failed(child, error)
            return
        child.popen = popen
        self._watch(child, popen)
        self._system(f"{spec.name} started (pid {popen.pid})")
        if self._on_start is not None:
            self._on_start(spec.name, popen.pid)

    def _watch(self, child: _Child, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        os.set_blocking(popen.stdout.fileno(), False)
        reader = _Reader(child, popen.stdout)
        self._readers.append(reader)
        self._selector.register(popen.stdout.fileno(), selectors.EVENT_READ, reader)
        with contextlib.suppress(AttributeError, OSError):  # no pidfd: _timeout() polls
            child.pidfd = os.pidfd_open(popen.pid)
            self._selector.register(child.pidfd, selectors.EVENT_READ, child)

    def _spawn_failed(self, child: _Child, error: OSError) -> None:
        cwd = child.spec.cwd
        status = EXIT_CHDIR if cwd is not None and str(error.filename) == str(cwd) else EXIT_EXEC
        message = f"failed to start: {error}"
        child.tail.append(message)
        self._system(f"{child.spec.name} {message}")
        self._after_exit(child, status, ran_for=0.0)

    # --- output ---------------------------------------------------------------------

    def _read(self, reader: _Reader) -> bool:
        """Read what the pipe has now; False once nothing more is waiting."""
        try:
            data = os.read(reader.pipe.fileno(), _READ_BYTES)
        except BlockingIOError:
            return False
        if not data:
            self._close_reader(reader)
            return False
        reader.pending += data
        while (end := reader.pending.find(b"\n")) >= 0:
            self._emit(reader.child, bytes(reader.pending[:end]))
            del reader.pending[: end + 1]
        if len(reader.pending) > _MAX_LINE_BYTES:
            self._emit(reader.child, bytes(reader.pending))
            reader.pending.clear()
        return True

    def _emit(self, child: _Child, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").removesuffix("\r")
        child.tail.append(text)
        self._printer.line(child.spec.name, text)

    def _close_reader(self, reader: _Reader) -> None:
        if reader.pending:  # a last line without its newline
            self._emit(reader.child, bytes(reader.pending))
            reader.pending.clear()
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(reader.pipe.fileno())
        reader.pipe.close()
        self._readers.remove(reader)

    def _system(self, text: str) -> None:
        self._printer.line(SYSTEM_NAME, text)

    # --- exits ----------------------------------------------------------------------

    def _reap_exited(self) -> None:
        for child in self._children:
            if child.popen is not None and _has_exited(child.popen.pid):
                self._collect(child, child.popen)

    def _collect(self, child: _Child, popen: subprocess.Popen[bytes]) -> None:
        # What is left of the group dies with its main process, as under systemd.  The
        # unreaped zombie still holds the group id, so no unrelated process can have it.
        _signal_group(popen.pid, signal.SIGKILL)
        returncode = popen.wait()
        child.popen, child.stop_deadline = None, None
        self._forget_pidfd(child)
        for reader in [r for r in self._readers if r.pipe is popen.stdout]:
            while self._read(reader):  # the last lines belong in the exit report
                pass
        self._after_exit(child, returncode, time.monotonic() - child.started_at)

    def _forget_pidfd(self, child: _Child) -> None:
        if child.pidfd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(child.pidfd)
            os.close(child.pidfd)
            child.pidfd = None

    def _after_exit(self, child: _Child, returncode: int, ran_for: float) -> None:
        spec = child.spec
        child.returncode = returncode
        restart = not self._stopping and should_restart(
            spec.restart, classify_exit(spec, returncode)
        )
        delay = self._next_delay(child, ran_for) if restart else 0.0
        now = time.monotonic()
        crash_loop = restart and not child.limit.allows(now + delay)
        restart = restart and not crash_loop
        then = f"; restarting in {delay:.1f}s" if restart else ""
        self._system(f"{spec.name} {describe_returncode(returncode)}{then}")
        if self._on_exit is not None:
            self._on_exit(spec.name, returncode, restart)
        if crash_loop:
            self._crash_loop = CrashLoop(
                spec.name, returncode, child.limit.count, spec.start_limit_interval_sec,
                tuple(child.tail),
            )  # fmt: skip
            self._system(f"{self._crash_loop.describe()}: crash loop, stopping everything")
            self._begin_stop()
        elif restart:
            child.restart_at = now + delay

    def _next_delay(self, child: _Child, ran_for: float) -> float:
        if ran_for >= self._stable_after:
            child.quick_exits = 0
        delay = restart_delay(child.spec.restart_sec, child.quick_exits, self._backoff_cap)
        child.quick_exits += 1
        return delay

    # --- stopping -------------------------------------------------------------------

    def _begin_stop(self) -> None:
        self._stopping = True
        now = time.monotonic()
        for child in self._children:
            child.restart_at = None
            if child.popen is not None:
                self._send_stop_signal(child, child.popen.pid, now)

    def _send_stop_signal(self, child: _Child, pid: int, now: float) -> None:
        spec = child.spec
        mixed = spec.kill_mode == "mixed"
        send = _signal_process if mixed else _signal_group
        send(pid, spec.kill_signal)
        if spec.kill_signal not in (signal.SIGKILL, signal.SIGCONT):
            send(pid, signal.SIGCONT)  # like systemd: a stopped process must wake to obey
        if math.isfinite(spec.timeout_stop_sec):
            child.stop_deadline = now + spec.timeout_stop_sec
        target = "pid" if mixed else "process group"
        self._system(f"stopping {spec.name}: {_signal_name(spec.kill_signal)} to {target} {pid}")

    def _kill_all_now(self) -> None:
        for child in self._children:
            if child.popen is not None:
                self._system(f"stopping {child.spec.name} now: SIGKILL to its process group")
                _signal_group(child.popen.pid, signal.SIGKILL)

    def _kill_everything(self) -> None:
        """Last resort when run() fails: SIGKILL every group and reap every main process."""
        for child in self._children:
            popen, child.popen = child.popen, None
            if popen is not None:
                _signal_group(popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):  # unkillable (state D)
                    popen.wait(timeout=5)
            self._forget_pidfd(child)

    def _result(self) -> SupervisorResult:
        children = self._children
        timed_out = tuple(c.spec.name for c in children if c.killed_after_timeout)
        clean = (
            self._crash_loop is None
            and not timed_out
            and all(c.returncode is None or classify_exit(c.spec, c.returncode) == "clean"
                    for c in children)
        )  # fmt: skip
        statuses = {c.spec.name: c.returncode for c in children}
        return SupervisorResult(clean, statuses, self._crash_loop, timed_out)


@contextlib.contextmanager
def stop_on_signals(
    supervisor: Supervisor,
    signums: Iterable[int] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
) -> Iterator[None]:
    """Route these signals to supervisor.request_stop() (main thread only)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        supervisor.request_stop()

    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def _has_exited(pid: int) -> bool:
    """Whether pid has exited, without reaping it (WNOWAIT keeps the zombie)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_process(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
