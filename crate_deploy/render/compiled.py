"""Compiled templates kept between runs (Jinja's bytecode cache), private to the user.

Jinja turns each template into Python at every start: 15-25 ms of a first render of
a small site, for the same code each time. Jinja keeps it here instead, keyed by the
template's name and path, and uses it only while the sha1 of the template's source is
the one it was compiled from. Each file's name starts with a digest of what else the
code depends on: Jinja's version, the Python, and the environment's compile-time options.

The cache holds code that this process runs (unpickles, then executes), so it is used
only where nobody else can have written it: $XDG_CACHE_HOME/crate-deploy (else
~/.cache/crate-deploy, and only when the home is this user's: not a home `sudo` kept),
opened without following a symbolic link and used only while it is this user's with
mode 0700; each file there is read through that descriptor, never through a link, and
only if it is this user's and writable by no one else. Files are written 0600 under a
temporary name and renamed. Anything else (no home, a read-only one, a folder that is
someone else's or open to others): nothing cached, templates compiled as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

import jinja2
from jinja2.bccache import Bucket

from crate_deploy.folders import stage_at

OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


class PrivateBytecodeCache(jinja2.BytecodeCache):
    """Compiled templates in one folder of this user's, read and written through its
    descriptor (held open for the process)."""

    def __init__(self, folder: int, prefix: str) -> None:
        self.folder, self.prefix = folder, prefix

    def load_bytecode(self, bucket: Bucket) -> None:
        try:
            descriptor = os.open(self._name(bucket), os.O_RDONLY | OPEN_FLAGS,
                                 dir_fd=self.folder)
        except OSError:
            return  # not cached yet (or not a plain file): Jinja compiles
        with os.fdopen(descriptor, "rb") as stream:
            info = os.fstat(descriptor)
            if stat.S_ISREG(info.st_mode) and _private(info, 0o022):
                bucket.load_bytecode(stream)

    def dump_bytecode(self, bucket: Bucket) -> None:
        code = io.BytesIO()
        bucket.write_bytecode(code)
        name = self._name(bucket)
        with contextlib.suppress(OSError):  # a cache that cannot be written is no error
            temporary = stage_at(self.folder, name, code.getvalue(), 0o600)
            os.rename(temporary, name, src_dir_fd=self.folder, dst_dir_fd=self.folder)

    def _name(self, bucket: Bucket) -> str:
        return f"{self.prefix}-{bucket.key}"


def bytecode_cache(environment: jinja2.Environment) -> PrivateBytecodeCache | None:
    """The cache for this environment's templates, or None when there is no private
    place for it."""
    folder = _private_folder()
    if folder is None:
        return None
    return PrivateBytecodeCache(folder, _options_key(environment))


def _private_folder() -> int | None:
    """A descriptor on this user's cache folder (made 0700 when missing), or None."""
    base = Path(os.environ.get("XDG_CACHE_HOME", ""))
    try:
        if not base.is_absolute():  # the XDG rule: a relative one is ignored
            home = Path.home()
            if home.stat().st_uid != os.geteuid():
                return None  # sudo kept the caller's HOME: leave nothing of root's there
            base = home / ".cache"
        base.mkdir(parents=True, exist_ok=True)
        if base.stat().st_uid != os.geteuid():
            return None
        with contextlib.suppress(FileExistsError):
            (base / "crate-deploy").mkdir(0o700)
        folder = os.open(base / "crate-deploy", os.O_RDONLY | os.O_DIRECTORY | OPEN_FLAGS)
    except (OSError, RuntimeError):  # RuntimeError: Path.home() finds no home
        return None
    if _private(os.fstat(folder), 0o077):
        return folder
    os.close(folder)
    return None


def _private(info: os.stat_result, refused_mode: int) -> bool:
    """This user's, with none of the refused mode bits."""
    return info.st_uid == os.geteuid() and not info.st_mode & refused_mode


def _options_key(environment: jinja2.Environment) -> str:
    """What compiled code depends on besides the template's source: Jinja, the Python,
    the syntax and whitespace options, which filters and tests exist (a template naming
    an unknown one fails to compile), and how each is called: Jinja compiles a filter's
    pass_context / pass_environment / pass_eval_context into the call, so a filter that
    gains one must not meet code compiled before it did."""
    env = environment
    options = (jinja2.__version__, sys.version, sys.implementation.cache_tag,
               env.block_start_string, env.block_end_string, env.variable_start_string,
               env.variable_end_string, env.comment_start_string, env.comment_end_string,
               env.line_statement_prefix, env.line_comment_prefix, env.trim_blocks,
               env.lstrip_blocks, env.newline_sequence, env.keep_trailing_newline,
               env.optimized, env.is_async, env.autoescape, _passes(env.finalize),
               _calls(env.filters), _calls(env.tests), sorted(env.extensions))
    return "jinja-" + hashlib.sha256(repr(options).encode()).hexdigest()[:24]


def _passes(function: object) -> str | None:
    """What Jinja passes a filter, test or finalize first ("context", ...); "-" for none."""
    if function is None:
        return None
    return str(getattr(function, "jinja_pass_arg", "-"))


def _calls(functions: Mapping[str, object]) -> list[tuple[str, str | None]]:
    return [(name, _passes(function)) for name, function in sorted(functions.items())]
