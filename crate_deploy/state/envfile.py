"""Reading an EnvironmentFile= (the rendered PROJECT.env, the site's secrets file) the
way systemd reads it, for every command that needs its values, with one set of errors.

A malformed line is named by its number only: the line itself may hold a secret, and
the parser's own message quotes it.
"""

from __future__ import annotations

import re
from pathlib import Path

from crate_deploy.errors import LaunchError
from crate_deploy.systemd.units import UnitError, parse_environment_file


class EnvironmentFileError(LaunchError):
    """An environment file that cannot be used: `unreadable` when it could not be read at
    all (`missing` when it does not exist), else its content is wrong. The callers add
    what to do where they know it."""

    def __init__(self, message: str, *, unreadable: bool = False,
                 missing: bool = False) -> None:
        super().__init__(message)
        self.unreadable, self.missing = unreadable, missing


def read_environment_file(path: Path, what: str) -> dict[str, str]:
    """KEY=value pairs of path; what names it in errors ("the secrets file")."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EnvironmentFileError(f"cannot read {what} {path} ({exc.strerror})",
                                   unreadable=True,
                                   missing=isinstance(exc, FileNotFoundError)) from None
    except UnicodeDecodeError as exc:
        raise EnvironmentFileError(f"{what} {path} is not UTF-8 text (byte {exc.start + 1} "
                                   "cannot be read): save it as UTF-8") from None
    try:
        return parse_environment_file(text, str(path))
    except UnitError as exc:
        line = re.search(r":(\d+):", str(exc))
        where = f" at line {line.group(1)}" if line else ""
        raise EnvironmentFileError(f"{what} {path} is malformed{where}: write KEY=value "
                                   "lines") from None
