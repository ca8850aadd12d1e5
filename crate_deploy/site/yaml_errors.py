"""PyYAML's syntax errors, said the way a sysadmin would say them, at the mistake's line.

PyYAML reports what its parser was doing ("while parsing a block collection ...
expected <block end>, but found '?'") and where it noticed, which is often the line
after the mistake: an unclosed '[' or quote is noticed where the file goes on, a
missing ':' where the next key starts. We look at the text around both of its marks
to name the mistake and point at it. The pure-Python and libyaml loaders word their
problems differently, so we go by their context, their marks and the text, not the
wording.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class Explained:
    line: int  # 1-based, like the marks we print
    column: int
    message: str


def explain(exc: yaml.MarkedYAMLError, text: str) -> Explained:
    lines = text.splitlines() or [""]
    mark = exc.problem_mark or exc.context_mark
    at = (mark.line, mark.column) if mark else (0, 0)
    start = (exc.context_mark.line, exc.context_mark.column) if exc.context_mark else at
    context, problem = exc.context or "", exc.problem or ""
    explainer = _Explainer(lines, at, start)
    if _char(lines, at) == "\t":
        return explainer.tab()
    if "quoted scalar" in context and "end of stream" in problem:
        return explainer.unclosed_quote()
    if "flow sequence" in context or "flow mapping" in context:
        return explainer.flow(closing="]" if "sequence" in context else "}")
    if "block collection" in context:
        return explainer.missing_dash()
    if "block mapping" in context:
        return explainer.block_mapping()
    if problem.startswith("mapping values are not allowed") or "document start" in problem:
        return explainer.stray_colon()
    # What is left keeps PyYAML's words, less its "while parsing ..." narration.
    words = [part for part in (context, problem) if part and not part.startswith("while ")]
    return explainer.at_problem(" ".join(words) or "the file is not valid YAML")


class _Explainer:
    def __init__(self, lines: list[str], at: tuple[int, int], start: tuple[int, int]) -> None:
        self.lines, self.at, self.start = lines, at, start

    def _here(self, where: tuple[int, int], message: str) -> Explained:
        return Explained(where[0] + 1, where[1] + 1, message)

    def tab(self) -> Explained:
        return self._here(self.at, "a tab character: YAML indents with spaces only; replace "
                                   "the tab with spaces")

    def unclosed_quote(self) -> Explained:
        quote = _char(self.lines, self.start) or '"'
        return self._here(self.start, f"this {quote} opens a quoted value that is never "
                                      f"closed: end it with {quote} on the same line")

    def flow(self, closing: str) -> Explained:
        opening = "[" if closing == "]" else "{"
        if self.at[0] > self.start[0] or self.at[0] >= len(self.lines):
            return self._here(self.start, f"this '{opening}' is never closed: end the "
                                          f"{'list' if opening == '[' else 'mapping'} with "
                                          f"'{closing}' on the same line")
        return self._here(self.at, f"expected ',' or '{closing}' here, inside the "
                                   f"'{opening}' that starts at column {self.start[1] + 1}")

    def missing_dash(self) -> Explained:
        if _char(self.lines, self.at) == "-":
            return self.block_mapping()
        return self._here(self.at, "a key where the list expects an item: start a new item "
                                   "with '- ' (like the items above), or indent this key to "
                                   "line up with the keys of the item above")

    def block_mapping(self) -> Explained:
        line = self.at[0]
        if _char(self.lines, self.at) == "-":
            return self._here(self.at, "a list item ('- ') where a key is expected: put the "
                                       "list under its key, indented ('queues:' and below it "
                                       "'  - name: ...')")
        indent = _indent(self._line(line))
        previous = self._previous(line)
        if previous is None:
            return self.at_problem("this line's indentation lines up with no key above it")
        return self._here((line, indent), (
            f"this line is indented {indent} space(s), but the line before it (line "
            f"{previous + 1}) is indented {_indent(self._line(previous))}: the keys of one "
            "mapping start in the same column (indent with spaces, the same amount for "
            "each level)"))

    def stray_colon(self) -> Explained:
        line, column = self.at
        text = self._line(line)
        if ": " in text[:column]:  # a key and its value came first on this line
            return self._here(self.at, "this value holds ': ', which YAML reads as another "
                                       "key: put the value in quotes (key: \"a: b\")")
        previous = self._previous(line)
        if previous is not None and not self._line(previous).lstrip().startswith("- "):
            before = self._line(previous).strip()
            if not re.search(r":(\s|$)", before):
                fix = ("a ':' needs a space after it (key: value)" if ":" in before else
                       "it has no ':' after its key (key: value)")
                return self._here((previous, _indent(self._line(previous))),
                                  f"{fix}; YAML read it as one text with what follows")
            if _indent(text) > _indent(self._line(previous)):
                return self._here((line, _indent(text)), (
                    f"this line is indented more than line {previous + 1}, whose key already "
                    "has a value on its line: line the keys up in one column"))
        return self.at_problem("YAML cannot place this line: check the ':' after each key "
                               "and quote values that hold ': '")

    def at_problem(self, problem: str) -> Explained:
        return self._here(self.at, f"invalid YAML: {problem}")

    def _line(self, index: int) -> str:
        return self.lines[index] if 0 <= index < len(self.lines) else ""

    def _previous(self, line: int) -> int | None:
        """The nearest line above `line` that holds something other than a comment."""
        for index in range(min(line, len(self.lines)) - 1, -1, -1):
            stripped = self.lines[index].strip()
            if stripped and not stripped.startswith("#"):
                return index
        return None


def _char(lines: list[str], where: tuple[int, int]) -> str:
    line, column = where
    if 0 <= line < len(lines) and 0 <= column < len(lines[line]):
        return lines[line][column]
    return ""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))
