"""The unchanged-render fast path: `render` of a site whose every input, and every file it
left in the output directory, is as the last render found and left them answers from
that render's record, without loading the models, Jinja or click.

Every full render that writes (not --check, one directory) leaves a record,
RENDER_RECORD_FILE in the output directory, root-only (0600), written after the files:

- inputs: digests of crate-deploy's own files (every file of the package and the
  templates: path, size, mtime, ctime, inode), the Python (interpreter, version, flags,
  every sys.path entry's mtime and inode: a pip install or upgrade changes its
  site-packages), the command (site file and output directory as given, --host,
  --target), the working directory, the user and groups, and the environment render
  reads (PYDANTIC_DISABLE_PLUGINS);
- facts: every question the render asked the filesystem and its answer (crate_deploy/
  facts.py): the site file's and the secrets file's bytes (keyed digests), each relative
  path resolved, whether the celery program and the venv's python exist, the venv's stamp
  of installed distributions (which keys the probe of the Celery, kombu, Flower versions);
  and the signature (size, mtime, ctime, inode) of every other module file the full render
  loaded: a library edited in place changes no sys.path entry;
- outputs: each rendered file's keyed digest and mode, the manifest's list of files, and
  .crate-deploy-site's digest;
- what a render of the unchanged site prints: its warnings and notes, the files, the
  services a launch would restart (none), the versions.

A render asks all of that again, under the render lock, and answers only when every
answer is the same: then the full render would find every file unchanged and print just
that, because everything it reads is the same. Any doubt (no record, unreadable, another
format, not owned by this user or readable by others, a symbolic link, a different answer,
stdout or stderr closed, a site or secrets file that is not a regular file (a pipe),
an option it does not know, output that is not printable ASCII) and it steps aside for the
full render, which reports the change and writes a new record. `--all-hosts` always takes
the full render. CRATE_DEPLOY_FAST_PATH=0 turns it off; with CRATE_DEPLOY_DEBUG=1 it says
on stderr whether it answered, or why not.

Digests of file contents are BLAKE2b keyed with a random key kept in the record, so the
record says nothing about a secret to whoever cannot read it, and only its owner can.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import sys
import time

from crate_deploy import facts
from crate_deploy.commands import report
from crate_deploy.commands.render_inputs import input_digests

# Neither dataclasses, typing nor contextlib: 10-15 ms of imports the fast path avoids.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMAT = 2
# About when this process started, where /proc does not say: a module file changed after
# that may differ from the code it runs, so such a render leaves no record
# (commands/render_record.py).
LOADED_NS = time.time_ns()
# In the output directory; the names of the manifest and of .crate-deploy-site come in the
# record (from plan/names.py, which this module does not import: pathlib, typing).
RENDER_RECORD_FILE = ".crate-deploy-render-record.json"
RECORD_MODE = 0o600
DEFAULT_SITE = "site.yaml"
DEFAULT_OUTPUT_DIR = "crate-deploy-out"
TARGETS = ("systemd", "kubernetes")
_FLAGS = {"--check": "check", "--diff": "show_diff", "--json": "as_json",
          "--force": "force", "-v": "verbose", "--verbose": "verbose"}
_VALUED = {"-o": "output", "--output": "output", "--host": "host", "--target": "target"}
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class StepAside(Exception):
    """The fast path cannot vouch for this render; the message says why."""


class RenderArgs:
    """`render`'s command line, as the fast path understands it."""

    def __init__(self, site: str, directory: str, host: str | None, target: str, *,
                 check: bool, show_diff: bool, as_json: bool, verbose: bool,
                 force: bool = False) -> None:
        self.site, self.directory, self.host, self.target = site, directory, host, target
        self.check, self.show_diff, self.as_json = check, show_diff, as_json
        self.verbose, self.force = verbose, force


class Attempt:
    """What the fast path worked out before stepping aside, for the full render's record:
    the inputs were taken before anything else was imported or read."""

    def __init__(self, args: RenderArgs, inputs: dict[str, str]) -> None:
        self.args, self.inputs = args, inputs


_pending: Attempt | None = None


def take_pending() -> Attempt | None:
    """The last fast-path attempt of this process (once)."""
    global _pending
    attempt, _pending = _pending, None
    return attempt


def fast_render(argv: list[str]) -> int | None:
    """Answer `render ARGV` from the record when nothing changed (the exit code), else None
    (the full render runs, and records)."""
    global _pending
    _pending = None
    args = parse_args(argv)
    if args is None:
        debug("the fast path steps aside: options it does not handle")
        return None
    if os.environ.get("CRATE_DEPLOY_FAST_PATH", "1") == "0":
        debug("the fast path steps aside: CRATE_DEPLOY_FAST_PATH=0")
        return None
    if sys.stdout is None or sys.stderr is None:
        # fd 1 or 2 closed: click prints nothing there and the render goes on; leave such
        # a run to it rather than imitate that.
        return None
    try:
        attempt = Attempt(args, input_digests(args.site, args.directory, args.host,
                                              args.target))
        _pending = attempt
        errors, lines = _answer(attempt)
    except StepAside as reason:
        debug(f"the fast path steps aside: {reason}")
        return None
    except Exception as exc:  # any doubt: the full render decides
        debug(f"the fast path steps aside: {type(exc).__name__}: {exc}")
        return None
    debug(f"the fast path answered: nothing changed since the record in {args.directory}")
    _pending = None
    # Through the full render's own printer: the same bytes, and the same end when the
    # reader went away (cli.py).
    if errors:
        report.echo("\n".join(errors), err=True)
    if lines:
        report.echo("\n".join(lines))
    return 0


def parse_args(argv: list[str]) -> RenderArgs | None:
    """render's arguments as click would read them, or None for anything unusual (an
    option the fast path leaves to the full render, a repeated one, odd characters)."""
    positional: list[str] = []
    flags: set[str] = set()
    values: dict[str, str] = {}
    items = iter(argv)
    for arg in items:
        if not plain_argument(arg):
            return None
        if not arg.startswith("-"):
            positional.append(arg)
            continue
        name, equals, value = arg.partition("=")
        if name in _FLAGS and not equals and _FLAGS[name] not in flags:
            flags.add(_FLAGS[name])
        elif name in _VALUED and _VALUED[name] not in values:
            if not equals:
                value = next(items, "")
            if (name == "-o" and equals) or not plain_argument(value) or value.startswith("-"):
                return None
            values[_VALUED[name]] = value
        else:
            return None
    if len(positional) > 2 or (len(positional) == 2 and "output" in values):
        return None
    if values.get("target", "systemd") not in TARGETS:
        return None
    return RenderArgs(
        positional[0] if positional else DEFAULT_SITE,
        positional[1] if len(positional) == 2 else values.get("output", DEFAULT_OUTPUT_DIR),
        values.get("host"), values.get("target", "systemd"),
        check="check" in flags, show_diff="show_diff" in flags, as_json="as_json" in flags,
        verbose="verbose" in flags, force="force" in flags)


def plain_argument(text: str) -> bool:
    return bool(text) and text.isascii() and text.isprintable()


# --- answering from the record -----------------------------------------------------------


def _answer(attempt: Attempt) -> tuple[list[str], list[str]]:
    """(stderr lines, stdout lines) of the full render, when nothing changed."""
    args = attempt.args
    try:
        directory = os.open(args.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StepAside(f"cannot open {args.directory}: {exc.strerror}") from None
    try:
        # The full render's lock: shared to check, exclusive to write (and so waits, as the
        # full render does, for one in progress).
        fcntl.flock(directory, fcntl.LOCK_SH if args.check else fcntl.LOCK_EX)
        record = _read_record(directory)
        _same_inputs(record, attempt.inputs)
        _same_facts(record)
        _same_outputs(record, directory)
    finally:
        os.close(directory)
    return _said(record, args)


def _read_record(directory: int) -> dict[str, Any]:
    try:
        data, info = read_at(directory, RENDER_RECORD_FILE)
    except FileNotFoundError:
        raise StepAside("no record of a render there") from None
    except OSError as exc:
        raise StepAside(f"cannot read the record: {exc.strerror}") from None
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise StepAside("the record is not this user's alone (owner, or mode not 0600)")
    try:
        record = json.loads(data)
    except ValueError:
        raise StepAside("the record is damaged") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise StepAside("the record is of another format")
    return record


def _same_inputs(record: dict[str, Any], inputs: dict[str, str]) -> None:
    recorded = record["inputs"]
    for name, value in inputs.items():
        if recorded.get(name) != value:
            raise StepAside(f"input changed: {name}")
    if set(recorded) != set(inputs):
        raise StepAside("input changed: the record's inputs")


def _same_facts(record: dict[str, Any]) -> None:
    key = bytes.fromhex(record["key"])
    for kind, argument, answer in record["facts"]:
        if facts.answer(kind, argument, key) != tuple(answer):
            raise StepAside(f"input changed: {kind} {argument}")


def _same_outputs(record: dict[str, Any], directory: int) -> None:
    """Each rendered file as written (content and mode), and the manifest and
    .crate-deploy-site as left (the manifest listing exactly the rendered files, or there
    would be no record)."""
    key = bytes.fromhex(record["key"])
    subdirectories: dict[str, int] = {}
    try:
        for path, mode, digest in record["files"]:
            if path.startswith("/") or {"", ".", ".."} & set(path.split("/")):
                raise StepAside(f"the record names {path!r}")
            folder, _, name = path.rpartition("/")
            parent = _subdirectory(directory, folder, subdirectories) if folder else directory
            try:
                data, info = read_at(parent, name)
            except OSError:
                raise StepAside(f"output changed: {path}") from None
            if info.st_mode & 0o777 != mode or facts.digest(data, key) != digest:
                raise StepAside(f"output changed: {path}")
    finally:
        for descriptor in subdirectories.values():
            os.close(descriptor)
    for name, digest in record["state_files"]:
        try:
            data, _ = read_at(directory, name)
        except OSError:
            raise StepAside(f"output changed: {name}") from None
        if facts.digest(data, key) != digest:
            raise StepAside(f"output changed: {name}")


def _subdirectory(directory: int, folder: str, opened: dict[str, int]) -> int:
    """A folder of the output directory, never through a symbolic link (as write.py)."""
    if folder not in opened:
        descriptor = directory
        for part in folder.split("/"):
            try:
                following = os.open(part, _DIRECTORY_FLAGS, dir_fd=descriptor)
            except OSError:
                raise StepAside(f"output changed: {folder}") from None
            finally:
                if descriptor != directory:
                    os.close(descriptor)
            descriptor = following
        opened[folder] = descriptor
    return opened[folder]


def read_at(directory: int, name: str) -> tuple[bytes, os.stat_result]:
    """A regular file's bytes and status, opened without following a symbolic link."""
    descriptor = os.open(name, _FILE_FLAGS, dir_fd=directory)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks = []
        while chunk := os.read(descriptor, max(info.st_size + 1, 65536)):
            chunks.append(chunk)
        return b"".join(chunks), info
    finally:
        os.close(descriptor)


def _said(record: dict[str, Any], args: RenderArgs) -> tuple[list[str], list[str]]:
    """What the full render prints for the unchanged site, through the same words."""
    said = record["report"]
    paths, services = said["paths"], said["services"]
    lines: list[str] = []
    if args.as_json:
        files = [{"path": path, "status": "unchanged"} for path in paths]
        lines.append(report.json_document(said["directory"], files, services,
                                          written=not args.check))
    else:
        if args.verbose:
            lines.extend(report.file_line("unchanged", path) for path in paths)
        if args.check or args.show_diff:
            lines.extend(report.services_block(services))
        lines.append(report.summary_line(check=args.check, changed=0, total=len(paths),
                                         directory=said["directory"],
                                         celery=said["celery"], source=said["source"]))
    errors = list(record["stderr"])
    if not all(_printable(line) for line in [*errors, *lines]):
        raise StepAside("output that is not printable ASCII (the full render prints it)")
    return errors, lines


def _printable(text: str) -> bool:
    """Printable ASCII, line by line: click strips escape sequences (ESC [ ... m) from what
    it prints when not on a terminal, and whatever else it does to control characters is
    the full render's to do (a venv's metadata or a link's target may hold them)."""
    return text.isascii() and all(line.isprintable() for line in text.split("\n"))


def debug(message: str) -> None:
    if os.environ.get("CRATE_DEPLOY_DEBUG") and sys.stderr is not None:
        sys.stderr.write(f"crate-deploy: debug: {message}\n")
        sys.stderr.flush()
