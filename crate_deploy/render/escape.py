"""Escaping: the only way a site value reaches a rendered file.

`unit_*` for systemd lines, `env_value` for environment files, `python_literal` for
Python modules (plain data only, so no value from the site file can become code).
"""

from __future__ import annotations

import math
from typing import Any

from crate_deploy.errors import RenderError

# Characters that never need quoting in an ExecStart= word.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./@:,=+-")


def python_literal(value: Any) -> str:
    """A Python literal for plain data, laid out one item a line; refuses anything repr()
    would not round-trip."""
    _check_literal(value)
    return _layout(value, 0)


def _layout(value: Any, level: int) -> str:
    inner, outer = "    " * (level + 1), "    " * level
    if isinstance(value, dict) and value:
        lines = [f"{inner}{key!r}: {_layout(item, level + 1)}," for key, item in value.items()]
        return "{\n" + "\n".join(lines) + f"\n{outer}}}"
    if isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        lines = [f"{inner}{_layout(item, level + 1)}," for item in value]
        return "[\n" + "\n".join(lines) + f"\n{outer}]"
    return repr(value)


def _check_literal(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_literal(key)
            _check_literal(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_literal(item)
    elif not isinstance(value, str | int | float | bool | type(None)):
        raise RenderError(f"cannot write {type(value).__name__} as a Python literal")
    elif isinstance(value, float) and not math.isfinite(value):
        raise RenderError(f"cannot write {value!r} as a Python literal")


def unit_text(value: str) -> str:
    """Free text in a unit line (Description=): only '%' is special there."""
    return value.replace("%", "%%")


def unit_word(value: str) -> str:
    """One word of a unit command line: quoted, with \\, ", % and $ escaped."""
    if value and set(value) <= _PLAIN:
        return value
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
               .replace("%", "%%").replace("$", "$$"))
    return f'"{escaped}"'


def unit_assignment(value: str) -> str:
    """A quoted Environment= assignment; '$' is not special there, '%' and quotes are."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def unit_command(argv: list[str]) -> str:
    return " ".join(unit_word(arg) for arg in argv)


def env_value(value: str) -> str:
    """A value in an EnvironmentFile=: single quotes keep everything literal."""
    if "'" not in value:
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace(
        "`", "\\`")
    return f'"{escaped}"'


def seconds(value: float) -> str:
    """A systemd time span: whole seconds, else milliseconds (never 0, which means "off")."""
    if value == int(value):
        return f"{int(value)}s"
    return f"{max(1, round(value * 1000))}ms"
