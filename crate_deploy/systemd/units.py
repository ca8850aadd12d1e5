"""Read systemd unit files the way systemd does, for the subset crate-deploy renders.

`crate-deploy launch` runs the fleet from the rendered units, so the rules here
follow systemd's own (systemd.syntax(7), systemd.service(5), systemd.exec(5)):
a unit parsed here yields the argv and environment systemd would use.  Where
systemd merely logs a warning and skips a line, we refuse with UnitError: our
units are generated, so such a line means the file was not made by us.  The
lexical rules (quoting, escapes, specifiers, $VARs, environment files, time
spans, signals) live in crate_deploy.systemd.syntax.
"""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar, cast, get_args

from crate_deploy.systemd.syntax import (
    COMMENT_CHARS,
    WHITESPACE,
    UnitError,
    expand_word,
    parse_environment_assignments,
    parse_environment_file,
    parse_signal,
    parse_time_span,
    quote_exec_argument,
    resolve_specifiers,
    split_command_words,
)

__all__ = [
    "ExecCommand",
    "KillMode",
    "RestartPolicy",
    "ServiceSpec",
    "UnitError",
    "UnitFile",
    "load_service",
    "parse_environment_assignments",
    "parse_environment_file",
    "parse_exec_line",
    "parse_signal",
    "parse_time_span",
    "parse_unit",
    "quote_exec_argument",
    "service_from_unit",
    "split_command_line",
]

RestartPolicy = Literal[
    "no", "on-success", "on-failure", "on-abnormal", "on-abort", "on-watchdog", "always"
]
KillMode = Literal["control-group", "mixed", "process", "none"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Steps the launcher cannot reproduce faithfully, so a unit using them is refused.
_UNSUPPORTED_KEYS = ("ExecCondition", "ExecStartPre", "ExecStartPost", "ExecStop", "ExecStopPost")
_SUPPORTED_TYPES = ("simple", "exec", "notify", "notify-reload", "idle")


# --- unit files -----------------------------------------------------------------


@dataclass(frozen=True)
class UnitFile:
    """A parsed unit: section name -> (key, value) assignments in file order."""

    source: str
    sections: dict[str, list[tuple[str, str]]]

    def values(self, section: str, key: str) -> list[str]:
        return [value for name, value in self.sections.get(section, []) if name == key]

    def value(self, section: str, key: str) -> str | None:
        """The last assignment wins, as for every single-valued systemd setting."""
        found = self.values(section, key)
        return found[-1] if found else None


def parse_unit(text: str, source: str) -> UnitFile:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for number, line in _logical_lines(text.removeprefix("\ufeff")):
        if line.startswith("["):
            current = sections.setdefault(_section_name(line, f"{source}:{number}"), [])
            continue
        if current is None:
            raise UnitError(f"{source}:{number}: assignment outside of any [Section]")
        key, separator, value = line.partition("=")
        if not separator or not key.strip():
            raise UnitError(f"{source}:{number}: expected Key=value, got {line!r}")
        _assign(current, key.strip(WHITESPACE), value.strip(WHITESPACE))
    return UnitFile(source, sections)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (first line number, stripped text), joining backslash-continued lines."""
    pending: str | None = None
    start = 0
    for number, raw in enumerate(_LINE_BREAK.split(text), start=1):
        stripped = raw.lstrip(WHITESPACE)
        if stripped and stripped[0] in COMMENT_CHARS:
            continue  # systemd drops comment lines even inside a continuation
        if pending is None:
            start, pending = number, raw
        else:
            pending += raw
        trailing = len(pending) - len(pending.rstrip("\\"))
        if trailing % 2 == 1:  # an odd run of backslashes escapes the line break
            pending = pending[:-1] + " "
            continue
        if pending.strip(WHITESPACE):
            yield start, pending.strip(WHITESPACE)
        pending = None
    if pending is not None and pending.strip(WHITESPACE):
        yield start, pending.strip(WHITESPACE)


def _section_name(line: str, where: str) -> str:
    if not line.endswith("]") or len(line) < 3:
        raise UnitError(f"{where}: invalid section header {line!r}")
    return line[1:-1]


def _assign(entries: list[tuple[str, str]], key: str, value: str) -> None:
    if value:
        entries.append((key, value))
    else:  # `Key=` resets everything assigned to Key so far
        entries[:] = [(name, old) for name, old in entries if name != key]


# --- command lines ----------------------------------------------------------------


@dataclass(frozen=True)
class ExecCommand:
    """An ExecStart= line as systemd holds it between loading and running the unit."""

    words: tuple[str, ...]  # unquoted, specifiers resolved, $VARs not yet expanded
    ignore_failure: bool = False  # "-" prefix: a failing exit counts as a success
    expand_environment: bool = True  # ":" prefix turns $VAR expansion off

    def expand(self, env: Mapping[str, str]) -> list[str]:
        """The argv systemd would execute with this environment."""
        if not self.expand_environment:
            return list(self.words)
        # systemd executes the path as written; only the arguments are expanded.
        argv = [self.words[0]]
        for word in self.words[1:]:
            argv.extend(expand_word(word, env))
        return argv


def parse_exec_line(value: str, where: str = "ExecStart=") -> ExecCommand:
    """Parse a command line: prefixes, quoting, escapes and specifiers (not $VARs)."""
    words = split_command_words(value, where)
    if not words:
        raise UnitError(f"{where}: empty command line")
    first, prefixes = _strip_prefixes(words[0], where)
    path = resolve_specifiers(first, where)
    if not path or path.endswith("/") or ("/" in path and not path.startswith("/")):
        raise UnitError(f"{where}: {path!r} is neither an absolute path nor a bare file name")
    arguments = (resolve_specifiers(word, where) for word in words[1:])
    return ExecCommand((path, *arguments), "-" in prefixes, ":" not in prefixes)


def split_command_line(value: str, env: Mapping[str, str]) -> list[str]:
    """The argv systemd would run for an ExecStart= value (see parse_exec_line for "-")."""
    return parse_exec_line(value).expand(env)


def _strip_prefixes(word: str, where: str) -> tuple[str, str]:
    prefixes = ""
    while word and word[0] in "-@:+!" and word[0] not in prefixes:
        prefixes, word = prefixes + word[0], word[1:]
    unsupported = [prefix for prefix in prefixes if prefix in "@+!"]
    if unsupported:
        raise UnitError(
            f"{where}: prefix {unsupported[0]!r} is not supported by crate-deploy"
            " (only '-' and ':' are)"
        )
    return word, prefixes


# --- services -----------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceSpec:
    """What systemd would run for a .service unit, with systemd's defaults."""

    name: str  # unit file name without .service
    argv: list[str]
    environment: dict[str, str]  # base env, then Environment=, then each EnvironmentFile=
    environment_files: list[tuple[Path, bool]] = field(default_factory=list)  # (path, optional)
    working_directory: Path | None = None  # None: not set (systemd would use /)
    user: str | None = None
    group: str | None = None
    restart: RestartPolicy = "no"
    restart_sec: float = 0.1
    timeout_stop_sec: float = 90.0  # math.inf: wait forever
    kill_signal: int = int(signal.SIGTERM)
    kill_mode: KillMode = "control-group"
    start_limit_burst: int = 5
    start_limit_interval_sec: float = 10.0
    ignore_failure: bool = False  # ExecStart=-...: a failing exit counts as a success
    umask: int = 0o022  # UMask=, systemd's default


def load_service(path: Path, base_env: Mapping[str, str]) -> ServiceSpec:
    """Load a .service unit and the environment files it names.

    systemd starts every service from a clean environment (little more than
    PATH and LANG) plus the unit's own settings, so which variables the
    foreground run inherits is the caller's decision: pass a minimal mapping to
    reproduce systemd, or os.environ to inherit the shell.  base_env is applied
    first, then Environment=, then each EnvironmentFile= in order.
    """
    if path.suffix != ".service":
        raise UnitError(f"{path}: not a .service unit")
    unit = parse_unit(_read_text(path, "unit file"), str(path))
    return service_from_unit(unit, path.stem, base_env)


def service_from_unit(unit: UnitFile, name: str, base_env: Mapping[str, str]) -> ServiceSpec:
    _refuse_unsupported(unit)
    environment, files = _environment(unit, base_env)
    command = _exec_start(unit)
    try:
        argv = command.expand(environment)
    except UnitError as error:
        raise UnitError(f"{unit.source}: {error}") from None
    limits = ("Unit", "Service")  # [Service] holds the legacy spellings
    return ServiceSpec(
        name=name,
        argv=argv,
        environment=environment,
        environment_files=files,
        working_directory=_setting(unit, ("WorkingDirectory",), _working_directory, None),
        user=_setting(unit, ("User",), _plain_text, None),
        group=_setting(unit, ("Group",), _plain_text, None),
        restart=_setting(unit, ("Restart",), _restart_policy, "no"),
        restart_sec=_setting(unit, ("RestartSec",), parse_time_span, 0.1),
        # systemd reads TimeoutStopSec=0 as "no timeout".
        timeout_stop_sec=_setting(unit, ("TimeoutSec", "TimeoutStopSec"), parse_time_span, 90.0)
        or math.inf,
        kill_signal=_setting(unit, ("KillSignal",), parse_signal, int(signal.SIGTERM)),
        kill_mode=_setting(unit, ("KillMode",), _kill_mode, "control-group"),
        start_limit_burst=_setting(unit, ("StartLimitBurst",), _count, 5, limits),
        start_limit_interval_sec=_setting(
            unit, ("StartLimitIntervalSec", "StartLimitInterval"), parse_time_span, 10.0, limits
        ),
        ignore_failure=command.ignore_failure,
        umask=_setting(unit, ("UMask",), _umask, 0o022),
    )


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UnitError(f"cannot read {what} {path}: {error}") from error


def _refuse_unsupported(unit: UnitFile) -> None:
    for key in _UNSUPPORTED_KEYS:
        if unit.values("Service", key):
            raise UnitError(f"{unit.source}: {key}= is not supported by crate-deploy launch")
    kind = unit.value("Service", "Type") or "simple"
    if kind not in _SUPPORTED_TYPES:
        raise UnitError(f"{unit.source}: Type={kind} is not supported by crate-deploy launch")


def _exec_start(unit: UnitFile) -> ExecCommand:
    lines = unit.values("Service", "ExecStart")
    if len(lines) != 1:
        count = "no" if not lines else "more than one"
        raise UnitError(f"{unit.source}: {count} ExecStart= (a service runs exactly one command)")
    return parse_exec_line(lines[0], f"{unit.source}: ExecStart=")


def _environment(
    unit: UnitFile, base_env: Mapping[str, str]
) -> tuple[dict[str, str], list[tuple[Path, bool]]]:
    environment = dict(base_env)
    for value in unit.values("Service", "Environment"):
        environment.update(parse_environment_assignments(value, f"{unit.source}: Environment="))
    files = [_environment_file_setting(value, unit.source)
             for value in unit.values("Service", "EnvironmentFile")]  # fmt: skip
    for path, optional in files:
        if optional and not path.exists():
            continue  # "-": a missing file is fine, as in systemd
        if not path.exists():
            raise UnitError(f"{unit.source}: EnvironmentFile={path} does not exist")
        environment.update(parse_environment_file(_read_text(path, "environment file"), str(path)))
    for value in unit.values("Service", "UnsetEnvironment"):
        _unset(environment, resolve_specifiers(value, f"{unit.source}: UnsetEnvironment="))
    return environment, files


def _unset(environment: dict[str, str], words: str) -> None:
    """UnsetEnvironment=, applied last as systemd does: NAME removes the variable,
    NAME=VALUE removes it only while it holds exactly that value."""
    for word in words.split():
        name, equals, value = word.partition("=")
        if not equals or environment.get(name) == value:
            environment.pop(name, None)


def _environment_file_setting(value: str, source: str) -> tuple[Path, bool]:
    text = resolve_specifiers(value, f"{source}: EnvironmentFile=")
    optional = text.startswith("-")
    text = text.removeprefix("-")
    if not text.startswith("/") or any(char in text for char in "*?["):
        raise UnitError(f"{source}: EnvironmentFile={value} must be an absolute path, not a glob")
    return Path(text), optional


def _umask(value: str) -> int:
    if re.fullmatch(r"[0-7]{1,4}", value) is None:
        raise UnitError("not an octal mode")
    return int(value, 8)


_T = TypeVar("_T")


def _setting(
    unit: UnitFile,
    keys: tuple[str, ...],
    parse: Callable[[str], _T],
    default: _T,
    sections: tuple[str, ...] = ("Service",),
) -> _T:
    """Parse the last assignment to any of keys (the last one wins, as in systemd)."""
    found = [(k, v) for section in sections for k, v in unit.sections.get(section, []) if k in keys]
    if not found:
        return default
    key, value = found[-1]
    try:
        return parse(value)
    except UnitError as error:
        raise UnitError(f"{unit.source}: {key}={value}: {error}") from None


def _plain_text(value: str) -> str:
    return resolve_specifiers(value, "value")


def _restart_policy(value: str) -> RestartPolicy:
    if value not in get_args(RestartPolicy):
        raise UnitError(f"expected one of {', '.join(get_args(RestartPolicy))}")
    return cast(RestartPolicy, value)


def _kill_mode(value: str) -> KillMode:
    if value not in get_args(KillMode):
        raise UnitError(f"expected one of {', '.join(get_args(KillMode))}")
    return cast(KillMode, value)


def _count(value: str) -> int:
    if not value.isdigit():
        raise UnitError("expected a whole number")
    return int(value)


def _working_directory(value: str) -> Path | None:
    text = _plain_text(value)
    optional = text.startswith("-")  # "-": a missing directory is not an error
    path = Path(text.removeprefix("-"))
    if not path.is_absolute():
        raise UnitError("must be an absolute path (~ is not supported)")
    return None if optional and not path.is_dir() else path
