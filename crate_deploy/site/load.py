"""Read a site file: YAML in, plain Python data out, with the line and column of every key.

The marks let every later error (pydantic's or our own cross-checks') point at
`site.yaml:LINE:COL`. We compose the YAML node graph ourselves instead of using
yaml.safe_load so that we keep positions, refuse duplicate keys (PyYAML silently
keeps the last one) and cap how far aliases may expand (alias bombs).
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crate_deploy import facts
from crate_deploy.errors import Problem, SiteError

MAX_FILE_BYTES = 1024 * 1024
MAX_VALUES = 100_000
# Characters of text once aliases are expanded: a few long strings aliased a few
# hundred times stay under MAX_VALUES yet expand a 400 KB file to hundreds of MB.
MAX_EXPANDED_CHARS = 4 * MAX_FILE_BYTES
MAX_DEPTH = 32
# YAML allows tabs and line breaks; any other control character is a paste accident or an attack.
# U+2028/U+2029 are line breaks to YAML but not to most editors: a comment could hide a key.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
MERGE_TAG = "tag:yaml.org,2002:merge"

Loc = tuple[int | str, ...]
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Mark:
    """Where a key or value starts in the site file (1-based line and column)."""

    line: int
    column: int


@dataclass
class LoadedSite:
    """The site file's data plus where each key and list item stands in the file."""

    name: str
    data: Any
    marks: dict[Loc, Mark] = field(default_factory=dict)

    def locate(self, loc: Loc) -> Mark:
        """The mark of `loc`, or of its nearest enclosing key when `loc` is absent."""
        while loc not in self.marks and loc:
            loc = loc[:-1]
        return self.marks.get(loc, Mark(1, 1))

    def problem(self, loc: Loc, message: str, severity: str = "error") -> Problem:
        mark = self.locate(loc)
        return Problem(self.name, mark.line, mark.column, format_loc(loc), message, severity)


def format_loc(loc: Loc) -> str:
    """('workers', 1, 'concurrency') -> 'workers[1].concurrency'. A key from the file that
    holds a line break or other unprintable character is quoted (environment['A\\nB']),
    so one problem stays one line."""
    text = ""
    for part in loc:
        if isinstance(part, int) or not part.isprintable():
            text += f"[{part!r}]" if isinstance(part, str) else f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def load_site(path: Path) -> LoadedSite:
    """Read and parse a site file; every failure is a SiteError with a position."""
    name = str(path)
    try:
        raw = facts.read_bytes(path)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SiteError([Problem(name, 1, 1, "", f"cannot read the site file: {reason}")]) from None
    return parse_site(raw, name)


def parse_site(raw: bytes, name: str) -> LoadedSite:
    if len(raw) > MAX_FILE_BYTES:
        limit = MAX_FILE_BYTES // 1024
        raise SiteError([Problem(name, 1, 1, "", f"the site file is larger than {limit} KiB")])
    text = _decode(raw, name)
    _refuse_control_characters(text, name)
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        from crate_deploy.site.yaml_errors import explain  # only a broken file needs it

        explained = explain(exc, text)
        raise SiteError([Problem(name, explained.line, explained.column, "",
                                 explained.message)]) from None
    except yaml.YAMLError as exc:
        raise SiteError([Problem(name, 1, 1, "", f"invalid YAML: {exc}")]) from None
    site = LoadedSite(name, None)
    if root is None:
        raise SiteError([Problem(name, 1, 1, "", "the site file is empty")])
    builder = _Builder(site, loader)
    site.data = builder.build(root, ())
    if builder.problems:
        raise SiteError(builder.problems)
    if not isinstance(site.data, dict):
        raise SiteError([site.problem((), "the site file must be a mapping of keys to values")])
    return site


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        byte = raw[exc.start]
        message = f"the site file is not valid UTF-8 (byte 0x{byte:02x})"
        raise SiteError([Problem(name, line, column, "", message)]) from None


def _refuse_control_characters(text: str, name: str) -> None:
    found = _CONTROL.search(text)
    if found:
        line = text.count("\n", 0, found.start()) + 1
        column = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
        code = ord(found.group())
        message = f"control character U+{code:04X} is not allowed in a site file"
        raise SiteError([Problem(name, line, column, "", message)])


class _Builder:
    """Turns composed YAML nodes into Python values, recording marks as it goes."""

    def __init__(self, site: LoadedSite, loader: yaml.SafeLoader) -> None:
        self.site = site
        self.loader = loader
        self.problems: list[Problem] = []
        self.count = 0
        self.chars = 0

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            message = f"expands to more than {MAX_VALUES} values (an alias bomb?)"
            raise SiteError([self._at(node, loc, message)])
        if len(loc) > MAX_DEPTH:
            message = f"nested more than {MAX_DEPTH} levels deep (a recursive alias?)"
            raise SiteError([self._at(node, loc[:MAX_DEPTH], message)])
        if isinstance(node, yaml.ScalarNode):
            self.chars += len(node.value)
            if self.chars > MAX_EXPANDED_CHARS:
                message = (f"expands to more than {MAX_EXPANDED_CHARS} characters of text "
                           "(an alias bomb?)")
                raise SiteError([self._at(node, loc, message)])
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            return [self._item(child, (*loc, index)) for index, child in enumerate(node.value)]
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self.problems.append(self._at(node, loc, f"unreadable value: {exc.problem}"))
        except Exception:
            # A tag forced onto the wrong text (!!int word, !!float ''), or a number too
            # large to read: PyYAML raises whatever int()/float()/datetime() raise.
            self.problems.append(self._at(node, loc, f"unreadable value for tag {node.tag}"))
        return None

    def _item(self, node: yaml.Node, loc: Loc) -> Any:
        self._mark(node, loc)
        return self.build(node, loc)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Hashable, Any]:
        result: dict[Hashable, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                self.problems.append(self._at(key_node, loc, "YAML merge keys (<<) are not "
                                              "supported: write the keys out"))
                continue
            # Built one level down, so the depth limit holds for keys too (&k {*k : 1}).
            key = self.build(key_node, (*loc, "(key)"))
            if not isinstance(key, str):
                self.problems.append(self._at(key_node, loc, f"keys must be text, not {key!r}"))
                continue
            child = (*loc, key)
            if key in result:
                first = self.site.marks[child].line
                self.problems.append(self._at(key_node, child,
                                              f"duplicate key (first given on line {first})"))
                continue
            self._mark(key_node, child)
            result[key] = self.build(value_node, child)
        return result

    def _mark(self, node: yaml.Node, loc: Loc) -> None:
        self.site.marks[loc] = Mark(node.start_mark.line + 1, node.start_mark.column + 1)

    def _at(self, node: yaml.Node, loc: Loc, message: str) -> Problem:
        mark = node.start_mark
        return Problem(self.site.name, mark.line + 1, mark.column + 1, format_loc(loc), message)
