"""Why a service died before the fleet was ready, and whether waiting could ever help.

A launch used to wait out its whole readiness timeout while a service crash-looped
on a mistake no restart can mend, and then blamed the symptom ("no answer to
ping"). Here an exit before ready is classified from its status and its last lines
of output: a failed exec (systemd's 203/200), a usage error (exit 2: click's
`Error: No such command 'flower'.`, or Celery's "Unable to load celery
application"), or exit 1 after a traceback that names a mistake (ModuleNotFoundError,
Address already in use, ValueError from a bad crontab...) is *certain*: launch
stops the fleet at once and puts the cause in its last line. Anything else (a
signal, a lost connection, an unknown exit code) may pass, so Restart= gets its turn.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from crate_deploy.run.supervise import EXIT_CHDIR, EXIT_EXEC

EXIT_USAGE = 2  # click's (and so celery's) status for a usage error
SHOWN_LINES = 20  # how many of a failed service's last lines a report repeats

_FRAME = re.compile(r'^\s+File "[^"]*", line \d+')
# A traceback's last line: an exception name (dotted, perhaps), a colon and its message.
_EXCEPTION = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(?::\s?(?P<message>.*))?$")
_CLICK_ERROR = re.compile(r"^Error: (?P<message>\S.*)$")
# Why a program did not start: the foreground supervisor's line, or systemd's own in the
# unit's journal ("NAME.service: Failed at step EXEC spawning /x/celery: No such file ...").
_NOT_STARTED = re.compile(r"^(?:failed to start: |\S+: (?=Failed at step ))(?P<cause>.+)$")
# Exceptions a restart may cure: the broker or the network, not the deployment.
_TRANSIENT = re.compile(r"Connection|Timeout|OperationalError|BrokenPipe|Interrupt"
                        r"|RecoverableError|socket\.")
# What the raw words mean for this deployment, and what to do.
_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"No such command 'flower'"),
     "Flower is not installed in the application's venv: pip install flower there"),
    (re.compile(r"No module named '(?P<module>[^']+)'"),
     "cannot import {module}: check `app:`, `working_directory` and the venv"),
    (re.compile(r"Address already in use"),
     "its port is already taken by another process: stop it or choose another port"),
    (re.compile(r"Permission denied"),
     "the service user may not read or run something it needs"),
    (re.compile(r"crontab|Invalid (?:beginning|end) range|Invalid weekday"),
     "a beat schedule entry's cron field is out of range"),
)


@dataclass(frozen=True)
class Failure:
    """A service that cannot come up: its name, the cause in one line, its last lines."""

    service: str
    cause: str
    last_lines: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.service} failed before the fleet was ready: {self.cause}"


def classify_early_exit(service: str, returncode: int, lines: Sequence[str]) -> Failure | None:
    """The certain failure an exit before ready shows, or None if a restart may help."""
    tail = tuple(lines)
    if returncode in (EXIT_EXEC, EXIT_CHDIR):
        said = next((match["cause"] for line in reversed(tail)
                     if (match := _NOT_STARTED.match(line))), f"exited with status {returncode}")
        return Failure(service, said, tail)
    raw = cause_from_output(tail)
    if returncode == EXIT_USAGE:
        return Failure(service, explain(raw or "usage error (exit code 2)"), tail)
    if returncode == 1 and raw is not None and not _TRANSIENT.search(raw.split(":")[0]):
        return Failure(service, explain(raw), tail)
    return None


def cause_from_output(lines: Sequence[str]) -> str | None:
    """The line that says what went wrong: a traceback's exception, else click's Error:."""
    exception = _last_exception(lines)
    if exception is not None:
        return exception
    for line in reversed(lines):
        if match := _CLICK_ERROR.match(line.strip()):
            return f"Error: {match['message']}"
    return None


def explain(raw: str) -> str:
    """The raw cause, with what it means here when it is a mistake we know."""
    for pattern, hint in _HINTS:
        if match := pattern.search(raw):
            return f"{raw} ({hint.format(**match.groupdict())})"
    return raw


def _last_exception(lines: Sequence[str]) -> str | None:
    """The exception line of the last traceback: the first unindented line after its
    last frame (the tail may have lost the "Traceback" header of a long one)."""
    frames = [index for index, line in enumerate(lines) if _FRAME.match(line)]
    if not frames:
        return None
    for line in lines[frames[-1] + 1:]:
        if line.strip() and not line[:1].isspace():
            return line.strip() if _EXCEPTION.match(line.rstrip()) else None
    return None


@dataclass
class EarlyExits:
    """Watches a starting fleet's exits (the supervisor's on_exit hook) until it is ready.

    The first certain failure asks the fleet to stop (`stop`, safe from the supervisor's
    thread); every exit is counted, so a timeout can name what kept dying.
    """

    last_lines: Callable[[str], list[str]]
    stop: Callable[[], None]
    stopping: Callable[[], bool] = lambda: False  # exits during a stop are no failure
    ready: threading.Event = field(default_factory=threading.Event)
    failure: Failure | None = None
    exits: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (count, last)

    def on_exit(self, service: str, returncode: int, will_restart: bool) -> None:
        if self.ready.is_set() or self.failure is not None or self.stopping():
            return
        count = self.exits.get(service, (0, 0))[0] + 1
        self.exits[service] = (count, returncode)
        failure = classify_early_exit(service, returncode, self.last_lines(service))
        if failure is not None:
            self.failure = failure
            self.stop()

    def most_exits(self) -> tuple[str, int, int] | None:
        """The service that exited most often before ready: (name, exits, last status)."""
        if not self.exits:
            return None
        name = max(self.exits, key=lambda key: self.exits[key][0])
        return name, *self.exits[name]
