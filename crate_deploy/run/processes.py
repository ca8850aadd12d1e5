"""The process-level helpers of the foreground supervisor: whose identity a service
runs with, signals to a process or its group, exit checks that do not reap, and the
routing of Ctrl-C / SIGTERM to a supervisor's stop request."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any, Protocol

from crate_deploy.run.policy import ProcessSpec


class _Stoppable(Protocol):  # what stop_on_signals needs of a Supervisor
    def request_stop(self) -> None: ...


def identity(spec: ProcessSpec) -> dict[str, Any]:
    """Popen arguments that run the process as its unit's User=/Group=, as systemd would;
    only root can switch, so anyone else runs it as themselves (launch says so)."""
    if spec.user is None or os.geteuid() != 0:
        return {}
    return {"user": spec.user, "group": spec.group or spec.user, "extra_groups": []}


@contextlib.contextmanager
def stop_on_signals(
    supervisor: _Stoppable,
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


def has_exited(pid: int) -> bool:
    """Whether pid has exited, without reaping it (WNOWAIT keeps the zombie)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def signal_process(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
