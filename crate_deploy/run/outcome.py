"""How a launch that failed says so: the failed service's last lines, then one line
that names the service and the cause (the line an operator, or a CI log, sees last)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from crate_deploy.run.failure import SHOWN_LINES, EarlyExits, Failure, cause_from_output, explain
from crate_deploy.run.policy import CrashLoop, LinePrinter, describe_returncode


def report_failure(say: LinePrinter, me: str, failure: Failure | CrashLoop) -> int:
    """A certain failure before ready, or a crash loop: its last lines, then the error."""
    if isinstance(failure, Failure):
        show_last_lines(say, me, failure.service, failure.last_lines)
        say.line(me, f"error: {failure.describe()}")
        return 1
    show_last_lines(say, me, failure.name, failure.last_lines)
    cause = cause_from_output(failure.last_lines)
    said = f": {explain(cause)}" if cause else ""
    say.line(me, f"error: {failure.describe()} (start limit hit: a crash loop){said}")
    return 1


def report_not_ready(say: LinePrinter, me: str, watch: EarlyExits,
                     last_lines: Callable[[str], list[str]]) -> int:
    """After the readiness timeout: name the service that kept exiting, if one did (the
    readiness wait has said what did not answer)."""
    dying = watch.most_exits()
    if dying is None:
        return 1
    service, exits, status = dying
    lines = last_lines(service)
    show_last_lines(say, me, service, lines)
    cause = cause_from_output(lines)
    said = f": {explain(cause)}" if cause else ""
    say.line(me, f"error: {service} exited {exits} time(s) before the fleet was ready "
                 f"(last: {describe_returncode(status)}){said}")
    return 1


def show_last_lines(say: LinePrinter, me: str, service: str, lines: Sequence[str]) -> None:
    shown = list(lines)[-SHOWN_LINES:]
    if not shown:
        return
    say.line(me, f"last {len(shown)} line(s) of {service}:")
    for line in shown:
        say.line(me, f"  {line}")
