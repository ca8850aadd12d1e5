"""The record a full render leaves for the unchanged-render fast path (commands/
unchanged.py reads it; its docstring says what is in it).

Written after the rendered files, under the render lock, 0600 from its creation, by a
rename: a reader sees the old record or the new, and any record that does not match
the files makes the fast path step aside.
"""

from __future__ import annotations

import json
import os
import sys

from crate_deploy import facts
from crate_deploy.commands.unchanged import (
    FORMAT,
    LOADED_NS,
    RECORD_MODE,
    RENDER_RECORD_FILE,
    Attempt,
    debug,
    read_at,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Outcome:
    """What a full render that wrote one directory leaves for the next to compare with:
    the site file and output directory as it read them, --host and --target; (path, mode,
    content) of every rendered file; what a render of the unchanged site prints on stderr,
    and the report's facts (directory, paths, celery, source, services)."""

    def __init__(self, site: str, directory: str, host: str | None, target: str, *,
                 files: list[tuple[str, int, str]], manifest: str, state_files: list[str],
                 stderr: list[str], report: dict[str, Any]) -> None:
        self.site, self.directory, self.host, self.target = site, directory, host, target
        self.files, self.manifest, self.state_files = files, manifest, state_files
        self.stderr, self.report = stderr, report


def write_record(attempt: Attempt | None, ledger: facts.Ledger, outcome: Outcome) -> str:
    """Leave the record in the output directory, or say why not (empty when written)."""
    why_not = _unrecordable(attempt, ledger, outcome)
    if why_not or attempt is None:
        debug(f"no record: {why_not}")
        return why_not
    modules, why_not = _module_facts()
    if why_not:
        debug(f"no record: {why_not}")
        return why_not
    directory = outcome.directory
    key = ledger.key
    if not _manifest_lists(os.path.join(directory, outcome.manifest),
                           {path for path, _, _ in outcome.files}):
        return "the manifest lists files this render did not write"
    state_files = []
    for name in [outcome.manifest, *outcome.state_files]:
        try:
            state_files.append([name, facts.digest(_read_at_path(os.path.join(directory, name)),
                                                   key)])
        except OSError:
            return f"cannot read {name}"
    document = {
        "format": FORMAT,
        "key": key.hex(),
        "inputs": attempt.inputs,
        "facts": [[kind, argument, list(answer)]
                  for kind, argument, answer in [*ledger.listed(), *modules]],
        "files": [[path, mode, facts.digest(content.encode(), key)]
                  for path, mode, content in outcome.files],
        "state_files": state_files,
        "stderr": outcome.stderr,
        "report": outcome.report,
    }
    try:
        _replace(os.path.join(directory, RENDER_RECORD_FILE), json.dumps(document).encode())
    except OSError as exc:  # the render itself is done: the next one is simply not fast
        debug(f"no record: {exc}")
        return f"cannot write the record: {exc.strerror}"
    return ""


def _unrecordable(attempt: Attempt | None, ledger: facts.Ledger, outcome: Outcome) -> str:
    if attempt is None:
        return "not started from the command line (or an option the fast path leaves alone)"
    args = attempt.args
    same = (os.path.normpath(args.site) == os.path.normpath(outcome.site)
            and os.path.normpath(args.directory) == os.path.normpath(outcome.directory)
            and (args.host, args.target) == (outcome.host, outcome.target))
    if not same:
        return "the command line is not the one the fast path read"
    if ledger.doubt:
        return ledger.doubt
    return ""


def _module_facts() -> tuple[list[facts.Fact], str]:
    """The signature of every file Python loaded code from beyond crate-deploy's own (which
    are an input): jinja2, pydantic, yaml, click, the standard library. A pip install
    changes its sys.path entry, but an edit in place of a module (a patch, an editable
    install of a library) changes only the file. A file changed since about when this
    process started may not be the code it runs: then no record (the empty list and why)."""
    import crate_deploy

    own = os.path.dirname(crate_deploy.__file__) + os.sep
    since = _process_start_ns() - 20_000_000  # the filesystem clock lags by up to a tick
    paths = {path for module in list(sys.modules.values())
             if isinstance(path := getattr(module, "__file__", None), str)}
    found: list[facts.Fact] = []
    for path in sorted(paths):
        if not path.startswith(own):
            answer = facts.signature(path)
            if answer[0] != "ok" or int(answer[1].split(":")[2]) >= since:
                return [], f"{path} changed as the render ran"
            found.append(("module", path, answer))
    return found, ""


def _process_start_ns() -> int:
    """When this process started, on the clock file times are on (from /proc: what Python
    imported before crate-deploy's first line counts too); else half a second before this
    package's fast path was loaded."""
    import time

    try:
        with open("/proc/self/stat", "rb") as stream:
            after_name = stream.read().rsplit(b")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError):
        return LOADED_NS - 500_000_000
    return time.time_ns() - int(age * 1e9)


def _manifest_lists(path: str, paths: set[str]) -> bool:
    """The manifest lists exactly `paths`: a file it lists beyond them, gone today, would
    be "removed" by a render if it came back, which no record could tell."""
    try:
        listed = json.loads(_read_at_path(path).decode("utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(listed, dict) and set(listed) == paths


def _read_at_path(path: str) -> bytes:
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return read_at(directory, os.path.basename(path))[0]
    finally:
        os.close(directory)


def _replace(path: str, data: bytes) -> None:
    """Write the record beside its place (0600 from the start), then rename it there."""
    import contextlib
    import tempfile

    descriptor, temporary = tempfile.mkstemp(prefix=f"{os.path.basename(path)}.",
                                             dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), RECORD_MODE)
            handle.write(data)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
