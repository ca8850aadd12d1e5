"""The words of a render's report, as plain text: one place for both ways a render ends.

The full render (commands/render.py) and the unchanged-render fast path
(commands/unchanged.py) print their report through these functions, so an unchanged
site reads the same whichever path answered. Standard library only: the fast path
loads neither click nor the models, and a full render started without click (cli.py)
prints through `echo` as click would.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence

TYPE_CHECKING = False  # typing is not imported: the fast path's ~5 ms
if TYPE_CHECKING:
    from typing import TextIO

SERVICES_HEADING = "once installed with `crate-deploy launch --systemd`:"
# ANSI colours of a file's status on a terminal, as click.style would write them.
_STATUS_COLOURS = {"created": "\x1b[32m", "changed": "\x1b[33m", "removed": "\x1b[31m"}
_RESET = "\x1b[0m"
# A control sequence (ECMA-48 CSI: parameters, intermediates, a final byte), which click
# strips from what it prints anywhere but to a terminal.
_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def file_line(status: str, path: str, *, colour: bool = False) -> str:
    """One file's line: its status right-aligned (coloured, when `colour`), then its path."""
    column = f"{status:>9}"
    if colour and status in _STATUS_COLOURS:
        column = f"{_STATUS_COLOURS[status]}{column}{_RESET}"
    return f"{column}  {path}"


def echo(text: str, *, err: bool = False, nl: bool = True) -> None:
    """Print a line to stdout (or stderr) as click.echo does, without loading click: the
    stream as it is now (a test may have replaced it), nothing when it is closed, and
    terminal escape sequences (colours, or a hostile value's) only to a terminal."""
    stream = sys.stderr if err else sys.stdout
    if stream is None:
        return
    if not _is_terminal(stream):
        text = _ESCAPE_SEQUENCE.sub("", text)
    if nl:
        text += "\n"
    try:
        stream.write(text)
    except UnicodeEncodeError:  # an ASCII stream (PYTHONIOENCODING=ascii) and a path in UTF-8
        _write_utf8(stream, text)
    stream.flush()


def _write_utf8(stream: TextIO, text: str) -> None:
    """What click does on a stream whose encoding cannot hold the text: UTF-8 bytes (a
    name the filesystem gave in other bytes, as those bytes)."""
    data = text.encode("utf-8", "surrogateescape")
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(data.decode("ascii", "backslashreplace"))
        return
    stream.flush()
    buffer.write(data)


def on_terminal() -> bool:
    """Whether stdout is a terminal, where a file's status is coloured."""
    return _is_terminal(sys.stdout)


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except ValueError:  # closed
        return False


def service_lines(services: Mapping[str, Sequence[str]]) -> list[str]:
    """What launch --systemd would do, in its own words ("would restart: ..."), a line each;
    `services` as ServiceChanges.as_dict() gives it."""
    lines = [f"would restart: {' '.join(services['restart']) or '(nothing)'}"]
    if services["start"]:
        lines.append(f"would start: {' '.join(services['start'])}")
    if services["stop"]:
        lines.append(f"would stop and disable: {' '.join(services['stop'])}")
    lines.append(f"left running: {' '.join(services['left_running']) or '(nothing)'}")
    return lines


def services_block(services: Mapping[str, Sequence[str]]) -> list[str]:
    """The services part of `render --check` / `--diff`: a heading, then indented lines."""
    return [SERVICES_HEADING, *(f"  {line}" for line in service_lines(services))]


def summary_line(*, check: bool, changed: int, total: int, directory: str, celery: str,
                 source: str) -> str:
    """The last line of a render's report."""
    if check:
        return f"check: {changed} file(s) would change; nothing written"
    return (f"{changed} file(s) changed, {total - changed} unchanged in {directory} "
            f"(for Celery {celery}, {source})")


def json_document(directory: str, files: list[dict[str, str]],
                  services: Mapping[str, Sequence[str]], *, written: bool) -> str:
    """The whole report of one directory as JSON (files: path, status and any diff)."""
    document = {
        "directory": directory,
        "written": written,
        "changed": sum(entry["status"] != "unchanged" for entry in files),
        "files": files,
        "services": dict(services),
    }
    return json.dumps(document, indent=2)
