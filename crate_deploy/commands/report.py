"""The words of a render's report, as plain text: one place for both ways a render ends.

The full render (commands/render.py) and the unchanged-render fast path
(commands/unchanged.py) print their report through these functions, so an unchanged
site reads the same whichever path answered. Standard library only: the fast path
loads neither click nor the models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

SERVICES_HEADING = "once installed with `crate-deploy launch --systemd`:"


def file_line(status: str, path: str) -> str:
    """One file's line: its status right-aligned, then its path."""
    return f"{status:>9}  {path}"


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
