"""The questions a render asks the filesystem beyond its output directory, and their answers.

A render reads the site file, the secrets file, resolves the site's relative paths,
looks whether the venv's celery and python exist, and stamps the venv's installed
distributions. Each of those goes through a function here, which answers it and, while
a render is being recorded, notes the question and the answer. The unchanged-render
fast path (commands/unchanged.py) asks every noted question again with `answer` and
steps aside at the first different answer: the same functions serve both, so the two
cannot drift apart. Kept to the standard library (os only): the fast path imports it
without pydantic, Jinja or click.

File contents are noted as a keyed digest (BLAKE2b with the record's random key), never
as text: the secrets file's values stay out of the record.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

Answer = tuple[str, str]  # ("ok", value) or ("error", errno name)
Fact = tuple[str, str, Answer]  # (kind, argument, answer)

# The answer to "read" again of what is not a regular file: never the answer noted.
NOT_REGULAR: Answer = ("error", "not a regular file")
# What Path.exists() takes for "no" (anything else it raises).
_ABSENT = {errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP}


class Ledger:
    """The questions one render asked, with their first answers, in order; a context
    manager that notes every question asked through this module while it is open.
    (Plain classes here, no dataclasses: the fast path imports this module.)"""

    def __init__(self) -> None:
        self.key = os.urandom(16)  # of the digests of file contents
        self.facts: dict[tuple[str, str], Answer] = {}
        self.doubt = ""  # why this render must leave no record (empty: it may)
        self._outer: Ledger | None = None

    def __enter__(self) -> Ledger:
        global _active
        self._outer, _active = _active, self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = self._outer

    def note(self, kind: str, argument: str, answer: Answer) -> None:
        first = self.facts.setdefault((kind, argument), answer)
        if first != answer:
            self.doubt = f"{kind} {argument} changed during the render"

    def listed(self) -> list[Fact]:
        return [(kind, argument, answer) for (kind, argument), answer in self.facts.items()]


_active: Ledger | None = None


def recording() -> Ledger:
    """`with recording() as ledger:` notes every question asked until the block ends."""
    return Ledger()


def digest(data: bytes, key: bytes) -> str:
    return hashlib.blake2b(data, key=key, digest_size=20).hexdigest()


def _error(exc: OSError) -> Answer:
    return ("error", errno.errorcode.get(exc.errno or 0, str(exc.errno)))


def _noted(kind: str, argument: str, answer: Answer) -> None:
    if _active is not None:
        _active.note(kind, argument, answer)


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes (as Path.read_bytes, raising the same OSError)."""
    argument = os.fspath(path)
    try:
        with open(argument, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        _noted("read", argument, _error(exc))
        raise
    if _active is not None:
        _active.note("read", argument, ("ok", digest(data, _active.key)))
    return data


def resolve(path: str | os.PathLike[str]) -> str:
    """Path(path).resolve() as text: absolute, every symbolic link followed; a loop
    raises RuntimeError, as pathlib's does."""
    argument = os.fspath(path)
    answer = _resolve(argument)
    _noted("resolve", argument, answer)
    if answer[0] == "error":
        raise RuntimeError(f"symbolic link loop at {argument!r}")
    return answer[1]


def _resolve(argument: str) -> Answer:
    resolved = os.path.realpath(argument)
    try:
        os.stat(resolved)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _error(exc)
    return ("ok", resolved)


def realpath(path: str) -> str:
    """os.path.realpath(path)."""
    resolved = os.path.realpath(path)
    _noted("realpath", path, ("ok", resolved))
    return resolved


def exists(path: str | os.PathLike[str]) -> bool:
    """Path(path).exists(): false for a missing file or a broken or looping link; any other
    failure (a directory on the way this user may not search) raises, as there."""
    argument = os.fspath(path)
    answer, failure = _exists(argument)
    _noted("exists", argument, answer)
    if failure is not None:
        raise failure
    return answer == ("ok", "yes")


def _exists(argument: str) -> tuple[Answer, OSError | None]:
    try:
        os.stat(argument)
    except OSError as exc:
        return (("ok", "no"), None) if exc.errno in _ABSENT else (_error(exc), exc)
    except ValueError:  # a NUL in the path
        return ("ok", "no"), None
    return ("ok", "yes"), None


def venv_stamp(executable: str) -> str:
    """The celery program's stamp (target/stamp.py): changes with what is installed."""
    from crate_deploy.target.stamp import stamp

    value = stamp(executable)
    _noted("stamp", executable, ("ok", value))
    return value


def _read_again(argument: str, key: bytes) -> Answer:
    """A regular file's digest, or NOT_REGULAR: a pipe (`render /dev/stdin`) or a device
    is never opened, let alone read, to be asked again (the data read would be gone for
    the full render, or would never end); stat first, then fstat what was opened. A
    directory answers as reading one did (EISDIR)."""
    mode = os.stat(argument).st_mode
    if stat.S_ISDIR(mode):
        return ("error", "EISDIR")
    if not stat.S_ISREG(mode):
        return NOT_REGULAR
    descriptor = os.open(argument, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(descriptor, "rb") as stream:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return NOT_REGULAR
        return ("ok", digest(stream.read(), key))


def signature(path: str) -> Answer:
    """A file's size, mtime, ctime, inode and device: an edit in place, even with the
    mtime set back, changes its ctime (the code of a module Python loaded)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return _error(exc)
    return ("ok", f"{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_ino}:"
                  f"{info.st_dev}")


def answer(kind: str, argument: str, key: bytes) -> Answer:
    """Ask a noted question again: the answer it would get now (never raises)."""
    try:
        if kind == "read":
            return _read_again(argument, key)
        if kind == "resolve":
            return _resolve(argument)
        if kind == "realpath":
            return ("ok", os.path.realpath(argument))
        if kind == "exists":
            return _exists(argument)[0]
        if kind == "module":
            return signature(argument)
        if kind == "stamp":
            from crate_deploy.target.stamp import stamp

            return ("ok", stamp(argument))
    except OSError as exc:
        return _error(exc)
    return ("error", f"unknown question {kind!r}")
