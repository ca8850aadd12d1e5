"""Escaping: the only way a site value reaches a rendered file.

`unit_*` for systemd lines, `env_value` for environment files, `python_literal` for
Python modules (plain data only, so no value from the site file can become code).
"""

from __future__ import annotations

import math
import re
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


# --- Kubernetes manifests (YAML) -----------------------------------------------------

# Plain YAML scalars that read back as the same string under YAML 1.1 and 1.2 alike.
_YAML_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./@=+-]*")
_YAML_SPECIAL = frozenset({"y", "yes", "n", "no", "true", "false", "on", "off", "null", "~"})


def yaml_scalar(value: str | int | float | bool) -> str:
    """One YAML scalar: numbers and booleans as such, a string plain when it cannot be
    read as anything else, else double-quoted with every awkward character escaped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        _check_literal(value)
        return repr(value)
    if _YAML_PLAIN.fullmatch(value) and value.lower() not in _YAML_SPECIAL:
        return value
    import yaml  # only Kubernetes renders need it

    # allow_unicode=False: everything outside printable ASCII becomes \x, \u or \U escapes
    # (never raw U+2028 or U+0085, which YAML 1.1 readers take as line breaks).
    dumped = yaml.safe_dump(value, default_style='"', allow_unicode=False, width=2**31,
                            explicit_end=False)
    return dumped.removesuffix("\n").removesuffix("\n...")


def kubernetes_expansion(value: str) -> str:
    """A literal for a container's command, args or env value: the kubelet expands $(NAME)
    there and turns $$ into $, so every '$' is doubled."""
    return value.replace("$", "$$")


def yaml_text_mapping(data: dict[str, str], indent: int) -> str:
    """A mapping of names to file contents (a ConfigMap's data), each as a literal block
    when YAML can hold it byte for byte that way, else double-quoted."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    dumped = yaml.dump(data, Dumper=Dumper, allow_unicode=False, width=2**31,
                       sort_keys=False, default_flow_style=False)
    # A last block kept with its trailing blank lines (|+) makes PyYAML end the document
    # ("..."); in a manifest more may follow, and the next key ends the block as well.
    dumped = dumped.removesuffix("...\n")
    pad = " " * indent
    return "".join(pad + line if line.strip() else line
                   for line in dumped.splitlines(keepends=True))
