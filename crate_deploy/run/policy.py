"""What the foreground supervisor decides, apart from the processes it runs.

The supervised process (ProcessSpec, built from a unit's ServiceSpec), how an
exit is classified and whether Restart= restarts after it (after RestartSec=, as
the unit says: no hidden backoff), systemd's start rate limit and the crash loop it
reports, the result of a run, and the `HH:MM:SS name | line` printer.
crate_deploy.run.supervise starts, watches and stops the processes by these rules.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from crate_deploy.systemd.units import RestartPolicy, ServiceSpec, UnitError

SYSTEM_NAME = "system"
CLEAN_SIGNALS = frozenset(
    int(s) for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)
)
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
    user: str | None = None  # User=: switched to when the supervisor runs as root
    group: str | None = None
    umask: int = 0o022  # UMask=: what systemd would give it, never the caller's umask


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
        user=service.user,
        group=service.group,
        umask=service.umask,
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


def describe_returncode(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    return f"was killed by {signal_name(-returncode)}"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class StartLimit:
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
