"""The output of a foreground fleet: each process's stdout and stderr, merged into one
pipe, read without blocking and printed line by line (`HH:MM:SS name | line`), its last
lines kept for the exit report.

A pipe outlives the run that opened it while children left behind still hold it open,
so pipes are tracked on their own, not as part of a process.
"""

from __future__ import annotations

import contextlib
import os
import selectors
from collections import deque
from dataclasses import dataclass, field
from typing import IO

from crate_deploy.run.policy import LinePrinter

_MAX_LINE_BYTES = 64 * 1024  # print a runaway line without newline rather than hoard it
_READ_BYTES = 64 * 1024


@dataclass
class OutputPipe:
    """One run's output pipe: whose it is, and the part of a line read so far."""

    name: str
    tail: deque[str]  # the process's last lines, shared with its supervisor
    pipe: IO[bytes]
    pending: bytearray = field(default_factory=bytearray)


class FleetOutput:
    """Every open output pipe, registered with the supervisor's selector."""

    def __init__(self, selector: selectors.BaseSelector, printer: LinePrinter) -> None:
        self._selector, self._printer = selector, printer
        self._pipes: list[OutputPipe] = []

    def __bool__(self) -> bool:
        """Whether some pipe is still open."""
        return bool(self._pipes)

    def watch(self, name: str, tail: deque[str], pipe: IO[bytes]) -> None:
        os.set_blocking(pipe.fileno(), False)
        output = OutputPipe(name, tail, pipe)
        self._pipes.append(output)
        self._selector.register(pipe.fileno(), selectors.EVENT_READ, output)

    def read(self, output: OutputPipe) -> bool:
        """Read what the pipe has now; False once nothing more is waiting."""
        try:
            data = os.read(output.pipe.fileno(), _READ_BYTES)
        except BlockingIOError:
            return False
        if not data:
            self.close(output)
            return False
        output.pending += data
        while (end := output.pending.find(b"\n")) >= 0:
            self._emit(output, bytes(output.pending[:end]))
            del output.pending[: end + 1]
        if len(output.pending) > _MAX_LINE_BYTES:
            self._emit(output, bytes(output.pending))
            output.pending.clear()
        return True

    def drain(self, pipe: IO[bytes] | None) -> None:
        """Everything left in pipe: a process's last lines belong in its exit report."""
        for output in [o for o in self._pipes if o.pipe is pipe]:
            while self.read(output):
                pass

    def close(self, output: OutputPipe) -> None:
        if output.pending:  # a last line without its newline
            self._emit(output, bytes(output.pending))
            output.pending.clear()
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(output.pipe.fileno())
        output.pipe.close()
        self._pipes.remove(output)

    def close_all(self) -> None:
        for output in list(self._pipes):
            self.close(output)

    def _emit(self, output: OutputPipe, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").removesuffix("\r")
        output.tail.append(text)
        self._printer.line(output.name, text)
