"""How a launch that failed says so: the failed service's last lines, then one line
that names the service and the cause (the line an operator, or a CI log, sees last)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from crate_deploy.run.failure import SHOWN_LINES, EarlyExits, Failure, cause_from_output, explain
from crate_deploy.run.policy import CrashLoop, describe_returncode

# Prints one line: a foreground launch's own prefixed line, or launch --systemd's echo.
Say = Callable[[str], None]


def report_failure(say: Say, failure: Failure | CrashLoop) -> int:
    """A certain failure before ready, or a crash loop: its last lines, then the error."""
    if isinstance(failure, Failure):
        show_last_lines(say, failure.service, failure.last_lines)
        say(f"error: {failure.describe()}")
        return 1
    show_last_lines(say, failure.name, failure.last_lines)
    cause = cause_from_output(failure.last_lines)
    said = f": {explain(cause)}" if cause else ""
    say(f"error: {failure.describe()} (start limit hit: a crash loop){said}")
    return 1


def report_not_ready(say: Say, watch: EarlyExits,
                     last_lines: Callable[[str], list[str]]) -> int:
    """After the readiness timeout: name the service that kept exiting, if one did (the
    readiness wait has said what did not answer)."""
    dying = watch.most_exits()
    if dying is None:
        return 1
    service, exits, status = dying
    lines = last_lines(service)
    show_last_lines(say, service, lines)
    cause = cause_from_output(lines)
    said = f": {explain(cause)}" if cause else ""
    say(f"error: {service} exited {exits} time(s) before the fleet was ready "
                 f"(last: {describe_returncode(status)}){said}")
    return 1


def show_last_lines(say: Say, service: str, lines: Sequence[str]) -> None:
    shown = list(lines)[-SHOWN_LINES:]
    if not shown:
        return
    say(f"last {len(shown)} line(s) of {service}:")
    for line in shown:
        say(f"  {line}")
