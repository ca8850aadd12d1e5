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

The rules it follows (Restart= after RestartSec=, the start limit, how exits are
classified and printed) live in crate_deploy.run.policy.
"""

from __future__ import annotations

import contextlib
import math
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from crate_deploy.run.output import FleetOutput, OutputPipe
from crate_deploy.run.policy import (
    CLEAN_SIGNALS,
    SYSTEM_NAME,
    CrashLoop,
    ExitKind,
    KillMode,
    LinePrinter,
    ProcessSpec,
    StartLimit,
    SupervisorResult,
    TextSink,
    classify_exit,
    describe_returncode,
    process_spec_from_service,
    should_restart,
    signal_name,
)
from crate_deploy.run.processes import (
    has_exited,
    identity,
    signal_group,
    signal_process,
    stop_on_signals,
)

__all__ = [
    "CLEAN_SIGNALS",
    "EXIT_CHDIR",
    "EXIT_EXEC",
    "SYSTEM_NAME",
    "TAIL_LINES",
    "CrashLoop",
    "ExitKind",
    "KillMode",
    "LinePrinter",
    "ProcessSpec",
    "Supervisor",
    "SupervisorResult",
    "TextSink",
    "classify_exit",
    "describe_returncode",
    "process_spec_from_service",
    "should_restart",
    "stop_on_signals",
]

TAIL_LINES = 40
EXIT_CHDIR = 200  # systemd's status when WorkingDirectory= cannot be entered
EXIT_EXEC = 203  # systemd's status when the command cannot be executed
_DRAIN_SEC = 0.5  # how long to wait for the last output once everything has exited
_POLL_SEC = 0.1  # exit polling when the kernel offers no pidfd
_IDLE_SEC = 1.0


@dataclass
class _Child:
    spec: ProcessSpec
    limit: StartLimit
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    popen: subprocess.Popen[bytes] | None = None
    pidfd: int | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    stop_deadline: float | None = None
    returncode: int | None = None
    killed_after_timeout: bool = False
    restarting: bool = False  # stopped on request_restart(): start again once it exits


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
            _Child(spec, StartLimit(spec.start_limit_burst, spec.start_limit_interval_sec))
            for spec in specs
        ]
        sink = output if output is not None else sys.stdout
        self._printer = printer if printer is not None else LinePrinter(sink, names, colour)
        self._on_start, self._on_exit = on_start, on_exit
        self._stop_requests = 0  # bumped by request_stop(), perhaps inside a signal handler
        self._stops_handled = 0
        self._stopping = False
        self._restart_requests: list[str] = []  # appended to by request_restart()
        self._crash_loop: CrashLoop | None = None
        self._selector: selectors.BaseSelector = selectors.DefaultSelector()
        self._output = FleetOutput(self._selector, self._printer)
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

    def request_restart(self, names: Iterable[str]) -> None:
        """Restart these processes warmly, as `systemctl restart` does: the stop signal
        (running tasks finish), then a start as soon as the process has exited.

        Safe in a signal handler and from other threads, like request_stop().
        """
        self._restart_requests.extend(names)  # list.extend is atomic under the GIL
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"\0")

    @property
    def stopping(self) -> bool:
        """Whether the fleet is being stopped (asked to, or after a crash loop)."""
        return self._stopping or self._stops_handled < self._stop_requests

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
            self._output.close_all()
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
            self._handle_restart_requests()
            self._reap_exited()
            self._fire_timers()
        deadline = time.monotonic() + _DRAIN_SEC
        while self._output and time.monotonic() < deadline:
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
            if isinstance(key.data, OutputPipe):
                self._output.read(key.data)
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

    def _handle_restart_requests(self) -> None:
        while self._restart_requests:
            name = self._restart_requests.pop(0)
            child = next((c for c in self._children if c.spec.name == name), None)
            if child is None or self._stopping:
                continue
            if child.popen is not None:
                child.restarting = True
                self._send_stop_signal(child, child.popen.pid, time.monotonic())
            else:  # down, or waiting for RestartSec=: start it now
                child.restart_at = time.monotonic()

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
                signal_group(child.popen.pid, signal.SIGKILL)

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
                umask=spec.umask,
                **identity(spec),
            )
        except OSError as error:
            self._spawn_failed(child, error)
            return
        except KeyError:  # subprocess looks the names up: no such user or group
            self._spawn_failed(child, OSError(f"no user {spec.user!r} or group {spec.group!r}"))
            return
        child.popen = popen
        self._watch(child, popen)
        self._system(f"{spec.name} started (pid {popen.pid})")
        if self._on_start is not None:
            self._on_start(spec.name, popen.pid)

    def _watch(self, child: _Child, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        self._output.watch(child.spec.name, child.tail, popen.stdout)
        with contextlib.suppress(AttributeError, OSError):  # no pidfd: _timeout() polls
            child.pidfd = os.pidfd_open(popen.pid)
            self._selector.register(child.pidfd, selectors.EVENT_READ, child)

    def _spawn_failed(self, child: _Child, error: OSError) -> None:
        cwd = child.spec.cwd
        status = EXIT_CHDIR if cwd is not None and str(error.filename) == str(cwd) else EXIT_EXEC
        message = f"failed to start: {error}"
        child.tail.append(message)
        self._system(f"{child.spec.name} {message}")
        self._after_exit(child, status)

    # --- output and exits -----------------------------------------------------------

    def _system(self, text: str) -> None:
        self._printer.line(SYSTEM_NAME, text)

    def _reap_exited(self) -> None:
        for child in self._children:
            if child.popen is not None and has_exited(child.popen.pid):
                self._collect(child, child.popen)

    def _collect(self, child: _Child, popen: subprocess.Popen[bytes]) -> None:
        # What is left of the group dies with its main process, as under systemd.  The
        # unreaped zombie still holds the group id, so no unrelated process can have it.
        signal_group(popen.pid, signal.SIGKILL)
        returncode = popen.wait()
        child.popen, child.stop_deadline = None, None
        self._forget_pidfd(child)
        self._output.drain(popen.stdout)
        self._after_exit(child, returncode)

    def _forget_pidfd(self, child: _Child) -> None:
        if child.pidfd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(child.pidfd)
            os.close(child.pidfd)
            child.pidfd = None

    def _after_exit(self, child: _Child, returncode: int) -> None:
        spec = child.spec
        child.returncode = returncode
        if child.restarting and not self._stopping:
            child.restarting, child.restart_at = False, time.monotonic()
            self._system(f"{spec.name} {describe_returncode(returncode)}; restarting as asked")
            if self._on_exit is not None:
                self._on_exit(spec.name, returncode, True)
            return
        restart = not self._stopping and should_restart(
            spec.restart, classify_exit(spec, returncode)
        )
        # RestartSec= as the unit says, every time: systemd before 254 has no backoff,
        # and the start limit below is what ends a crash loop.
        delay = spec.restart_sec if restart else 0.0
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
        send = signal_process if mixed else signal_group
        send(pid, spec.kill_signal)
        if spec.kill_signal not in (signal.SIGKILL, signal.SIGCONT):
            send(pid, signal.SIGCONT)  # like systemd: a stopped process must wake to obey
        if math.isfinite(spec.timeout_stop_sec):
            child.stop_deadline = now + spec.timeout_stop_sec
        target = "pid" if mixed else "process group"
        self._system(f"stopping {spec.name}: {signal_name(spec.kill_signal)} to {target} {pid}")

    def _kill_all_now(self) -> None:
        for child in self._children:
            if child.popen is not None:
                self._system(f"stopping {child.spec.name} now: SIGKILL to its process group")
                signal_group(child.popen.pid, signal.SIGKILL)

    def _kill_everything(self) -> None:
        """Last resort when run() fails: SIGKILL every group and reap every main process."""
        for child in self._children:
            popen, child.popen = child.popen, None
            if popen is not None:
                signal_group(popen.pid, signal.SIGKILL)
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
