"""Read systemd unit files the way systemd does, for the subset crate-deploy renders.

`crate-deploy launch` runs the fleet from the rendered units, so the rules here
follow systemd's own (systemd.syntax(7), systemd.service(5), systemd.exec(5)):
a unit parsed here yields the argv and environment systemd would use.  Where
systemd merely logs a warning and skips a line, we refuse with UnitError: our
units are generated, so such a line means the file was not made by us.
"""

from __future__ import annotations

import math
import re
import signal
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar, cast, get_args


class UnitError(Exception):
    """A unit file, or a file it names, that cannot be read the way systemd would."""


RestartPolicy = Literal[
    "no", "on-success", "on-failure", "on-abnormal", "on-abort", "on-watchdog", "always"
]
KillMode = Literal["control-group", "mixed", "process", "none"]

_WHITESPACE = " \t\n\r"
_COMMENT_CHARS = "#;"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SPECIFIER = re.compile(r"%(.)", re.DOTALL)
# `$$` and `${NAME}`; a `${NAME:-x}` is left alone, as systemd leaves it.
_DOLLAR_OR_BRACED = re.compile(r"\$\$|\$\{([^}:]*)\}")
_SIMPLE_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", '"': '"', "'": "'", "s": " ",
}  # fmt: skip
_HEX_ESCAPE_WIDTHS = {"x": 2, "u": 4, "U": 8}
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
        _assign(current, key.strip(_WHITESPACE), value.strip(_WHITESPACE))
    return UnitFile(source, sections)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (first line number, stripped text), joining backslash-continued lines."""
    pending: str | None = None
    start = 0
    for number, raw in enumerate(_LINE_BREAK.split(text), start=1):
        stripped = raw.lstrip(_WHITESPACE)
        if stripped and stripped[0] in _COMMENT_CHARS:
            continue  # systemd drops comment lines even inside a continuation
        if pending is None:
            start, pending = number, raw
        else:
            pending += raw
        trailing = len(pending) - len(pending.rstrip("\\"))
        if trailing % 2 == 1:  # an odd run of backslashes escapes the line break
            pending = pending[:-1] + " "
            continue
        if pending.strip(_WHITESPACE):
            yield start, pending.strip(_WHITESPACE)
        pending = None
    if pending is not None and pending.strip(_WHITESPACE):
        yield start, pending.strip(_WHITESPACE)


def _section_name(line: str, where: str) -> str:
    if not line.endswith("]") or len(line) < 3:
        raise UnitError(f"{where}: invalid section header {line!r}")
    return line[1:-1]


def _assign(entries: list[tuple[str, str]], key: str, value: str) -> None:
    if value:
        entries.append((key, value))
    else:  # `Key=` resets everything assigned to Key so far
        entries[:] = [(name, old) for name, old in entries if name != key]


def _resolve_specifiers(value: str, where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(1) == "%":
            return "%"
        raise UnitError(
            f"{where}: unit specifier %{match.group(1)} in {value!r}: crate-deploy never renders"
            " specifiers, so this unit was not generated by it (write %% for a literal %)"
        )

    return _SPECIFIER.sub(replace, value)  # a stray % at the very end stays, as in systemd


# --- quoting (systemd's extract_first_word) ---------------------------------------


@dataclass(frozen=True)
class _Quoting:
    c_escapes: bool  # decode \n, \x41, \u00e9 ... (systemd.syntax(7) "Quoting")
    keep_bad_escapes: bool  # keep an unknown escape verbatim (systemd warns) instead of failing
    lenient: bool  # accept an unclosed quote and drop a trailing backslash


_COMMAND_QUOTING = _Quoting(c_escapes=True, keep_bad_escapes=True, lenient=False)
_ASSIGNMENT_QUOTING = _Quoting(c_escapes=True, keep_bad_escapes=False, lenient=False)
_VARIABLE_QUOTING = _Quoting(c_escapes=False, keep_bad_escapes=False, lenient=True)


def _split_words(text: str, quoting: _Quoting, where: str, commands: bool = False) -> list[str]:
    words: list[str] = []
    at = _skip_whitespace(text, 0)
    while at < len(text):
        if commands and _is_bare_token(text, at, ";"):
            raise UnitError(
                f"{where}: ';' separates several commands, which only Type=oneshot allows"
                " (write \\; for a literal semicolon)"
            )
        if commands and _is_bare_token(text, at, "\\;"):
            words.append(";")
            at += 2
        else:
            word, at = _extract_word(text, at, quoting, where)
            words.append(word)
        at = _skip_whitespace(text, at)
    return words


def _skip_whitespace(text: str, at: int) -> int:
    while at < len(text) and text[at] in _WHITESPACE:
        at += 1
    return at


def _is_bare_token(text: str, at: int, token: str) -> bool:
    end = at + len(token)
    return text.startswith(token, at) and (end == len(text) or text[end] in _WHITESPACE)


def _extract_word(text: str, at: int, quoting: _Quoting, where: str) -> tuple[str, int]:
    # Bytes, because \xNN and octal escapes produce raw bytes, not characters.
    out = bytearray()
    quote = ""
    while at < len(text):
        char = text[at]
        if char == "\\":
            at = _take_escape(text, at, out, quoting, where)
            continue
        at += 1
        if quote:
            if char == quote:
                quote = ""
            else:
                out += _encode(char)
        elif char in "'\"":
            quote = char
        elif char in _WHITESPACE:
            break
        else:
            out += _encode(char)
    if quote and not quoting.lenient:
        raise UnitError(f"{where}: unbalanced quoting in {text!r}")
    return out.decode("utf-8", "surrogateescape"), at


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _take_escape(text: str, at: int, out: bytearray, quoting: _Quoting, where: str) -> int:
    """Append what the backslash at text[at] stands for; return the index after it."""
    if at + 1 == len(text):
        if quoting.lenient:
            return at + 1
        if quoting.keep_bad_escapes:
            out += b"\\"
            return at + 1
        raise UnitError(f"{where}: trailing backslash in {text!r}")
    if not quoting.c_escapes:
        out += _encode(text[at + 1])
        return at + 2
    decoded = _decode_escape(text, at + 1)
    if decoded is not None:
        out += decoded[0]
        return at + 1 + decoded[1]
    if quoting.keep_bad_escapes:
        out += _encode(text[at : at + 2])
        return at + 2
    raise UnitError(f"{where}: unknown escape sequence {text[at : at + 2]!r} in {text!r}")


def _decode_escape(text: str, at: int) -> tuple[bytes, int] | None:
    """Decode the escape whose letter is text[at]: (bytes, letters used), or None."""
    letter = text[at]
    if letter in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[letter].encode(), 1
    width = _HEX_ESCAPE_WIDTHS.get(letter)
    if width is not None:
        digits = text[at + 1 : at + 1 + width]
        if len(digits) != width or not all(d in string.hexdigits for d in digits):
            return None
        number = int(digits, 16)
        if number == 0 or (letter != "x" and not _is_unicode_scalar(number)):
            return None  # systemd refuses NUL and surrogates
        encoded = bytes([number]) if letter == "x" else chr(number).encode()
        return encoded, 1 + width
    digits = text[at : at + 3]
    if len(digits) == 3 and all(d in string.octdigits for d in digits):
        number = int(digits, 8)
        return (bytes([number]), 3) if 0 < number <= 0xFF else None
    return None


def _is_unicode_scalar(number: int) -> bool:
    return number <= 0x10FFFF and not 0xD800 <= number <= 0xDFFF


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
            argv.extend(_expand_word(word, env))
        return argv


def parse_exec_line(value: str, where: str = "ExecStart=") -> ExecCommand:
    """Parse a command line: prefixes, quoting, escapes and specifiers (not $VARs)."""
    words = _split_words(value, _COMMAND_QUOTING, where, commands=True)
    if not words:
        raise UnitError(f"{where}: empty command line")
    first, prefixes = _strip_prefixes(words[0], where)
    path = _resolve_specifiers(first, where)
    if not path or path.endswith("/") or ("/" in path and not path.startswith("/")):
        raise UnitError(f"{where}: {path!r} is neither an absolute path nor a bare file name")
    arguments = (_resolve_specifiers(word, where) for word in words[1:])
    return ExecCommand((path, *arguments), "-" in prefixes, ":" not in prefixes)


def split_command_line(value: str, env: Mapping[str, str]) -> list[str]:
    """The argv systemd would run for an ExecStart= value (see parse_exec_line for "-")."""
    return parse_exec_line(value).expand(env)


def quote_exec_argument(word: str) -> str:
    """Quote an argument (not the executable, which systemd never expands) so that
    parse_exec_line() and expand() give it back unchanged: for the unit renderer."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    escaped = escaped.replace("\r", "\\r").replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


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


def _expand_word(word: str, env: Mapping[str, str]) -> list[str]:
    if word.startswith("$") and word[1:2] not in ("{", "$"):
        # A lone $NAME becomes as many words as its value has; unset means none.
        value = env.get(_checked_name(word[1:], word))
        return [] if value is None else _split_words(value, _VARIABLE_QUOTING, word)

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return "$" if name is None else env.get(_checked_name(name, word), "")

    return [_DOLLAR_OR_BRACED.sub(replace, word)]


def _checked_name(name: str, word: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise UnitError(
            f"ExecStart=: {word!r} does not name a valid environment variable"
            " (systemd would silently replace it by nothing)"
        )
    return name


# --- environment --------------------------------------------------------------------


def parse_environment_assignments(value: str, where: str = "Environment=") -> dict[str, str]:
    """Parse one Environment= value: quoted NAME=value words, C escapes, %% -> %."""
    result: dict[str, str] = {}
    for word in _split_words(value, _ASSIGNMENT_QUOTING, where):
        name, separator, assigned = _resolve_specifiers(word, where).partition("=")
        if not separator or not _ENV_NAME.fullmatch(name):
            raise UnitError(f"{where}: {word!r} is not a NAME=value assignment")
        result[name] = assigned
    return result


def parse_environment_file(text: str, source: str) -> dict[str, str]:
    """Parse an EnvironmentFile= the way systemd does: no $VAR or % expansion."""
    return _EnvironmentFileReader(text, source).read_all()


class _EnvironmentFileReader:
    """systemd's env-file grammar, read one character at a time."""

    def __init__(self, text: str, source: str) -> None:
        self.text, self.source, self.at, self.line = text, source, 0, 1

    def read_all(self) -> dict[str, str]:
        result: dict[str, str] = {}
        while self._skip_blanks_and_comments():
            line = self.line
            key = self._read_key()
            if not _ENV_NAME.fullmatch(key):
                hint = " (drop the 'export')" if key.startswith("export ") else ""
                raise self._error(line, f"{key!r} is not a valid variable name{hint}")
            result[key] = self._read_value(line)
        return result

    def _error(self, line: int, message: str) -> UnitError:
        return UnitError(f"{self.source}:{line}: {message}")

    def _peek(self) -> str:
        return self.text[self.at : self.at + 1]

    def _advance(self) -> str:
        char = self.text[self.at]
        self.at += 1
        self.line += char == "\n"
        return char

    def _skip_blanks_and_comments(self) -> bool:
        while self.at < len(self.text):
            char = self._peek()
            if char in _COMMENT_CHARS:
                while self._peek() not in ("", "\n", "\r"):
                    self._advance()
            elif char in _WHITESPACE:
                self._advance()
            else:
                return True
        return False

    def _read_key(self) -> str:
        line = self.line
        chars: list[str] = []
        while self._peek() not in ("", "\n", "\r"):
            char = self._advance()
            if char == "=":
                return "".join(chars).rstrip(_WHITESPACE)
            chars.append(char)
        raise self._error(line, f"expected NAME=value, got {''.join(chars)!r}")

    def _read_value(self, line: int) -> str:
        out: list[str] = []
        state = "start"  # start (also after a closing quote) | bare | ' | "
        chomp_at: int | None = None  # where trailing unquoted whitespace began
        while (char := self._peek()) != "":
            if state in ("'", '"'):
                state = self._take_quoted(state, out)
                continue
            if char in "\n\r":
                break
            self._advance()
            if char == "\\":
                self._take_bare_escape(out)
                state, chomp_at = "bare", None
            elif state == "start" and char in " \t":
                pass
            elif state == "start" and char in "'\"":
                state = char
            else:
                state = "bare"
                if char not in " \t":
                    chomp_at = None
                elif chomp_at is None:
                    chomp_at = len(out)
                out.append(char)
        if state in ("'", '"'):
            raise self._error(line, f"unterminated {state} quote")
        return "".join(out[:chomp_at] if state == "bare" else out)

    def _take_quoted(self, quote: str, out: list[str]) -> str:
        char = self._advance()
        if char == quote:
            return "start"
        if char != "\\" or quote == "'" or self._peek() == "":
            out.append(char)
            return quote
        following = self._advance()
        if following in '"\\`$':  # like the shell: these lose their backslash
            out.append(following)
        elif following != "\n":  # an escaped newline continues the line
            out.extend(("\\", following))
        return quote

    def _take_bare_escape(self, out: list[str]) -> None:
        if self._peek() == "":
            return  # a backslash at the very end is dropped
        following = self._advance()
        if following not in "\n\r":  # an escaped line break continues the value
            out.append(following)


# --- values -----------------------------------------------------------------------

_TIME_UNITS = {
    "usec": 1e-6, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "msec": 1e-3, "ms": 1e-3,
    "": 1.0, "seconds": 1.0, "second": 1.0, "sec": 1.0, "s": 1.0,
    "minutes": 60.0, "minute": 60.0, "min": 60.0, "m": 60.0,
    "hours": 3600.0, "hour": 3600.0, "hr": 3600.0, "h": 3600.0,
    "days": 86400.0, "day": 86400.0, "d": 86400.0,
    "weeks": 604800.0, "week": 604800.0, "w": 604800.0,
    "months": 2629800.0, "month": 2629800.0, "M": 2629800.0,
    "years": 31557600.0, "year": 31557600.0, "y": 31557600.0,
}  # fmt: skip
_TIME_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Zµμ]*)")


def parse_time_span(value: str) -> float:
    """Seconds in a systemd time span ("90", "5min", "1min 30s", "infinity" -> inf)."""
    text = value.strip(_WHITESPACE)
    if text == "infinity":
        return math.inf
    total, at = 0.0, 0
    while at < len(text) or at == 0:
        match = _TIME_PART.match(text, at)
        if match is None or match.group(2) not in _TIME_UNITS:
            raise UnitError(f"invalid time span {value!r} (try 90, 90s, 5min or 1min 30s)")
        total += float(match.group(1)) * _TIME_UNITS[match.group(2)]
        at = match.end()
    return total


def parse_signal(value: str) -> int:
    """Signal number from SIGTERM, TERM or 15."""
    text = value.strip(_WHITESPACE)
    if text.isdigit() and int(text) in {int(s) for s in signal.valid_signals()}:
        return int(text)
    try:
        return int(signal.Signals[text if text.startswith("SIG") else f"SIG{text}"])
    except KeyError:
        raise UnitError(f"unknown signal {value!r}") from None


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
    return environment, files


def _environment_file_setting(value: str, source: str) -> tuple[Path, bool]:
    text = _resolve_specifiers(value, f"{source}: EnvironmentFile=")
    optional = text.startswith("-")
    text = text.removeprefix("-")
    if not text.startswith("/") or any(char in text for char in "*?["):
        raise UnitError(f"{source}: EnvironmentFile={value} must be an absolute path, not a glob")
    return Path(text), optional


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
    return _resolve_specifiers(value, "value")


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
