"""YAML syntax errors are explained for a sysadmin, at the line of the mistake.

PyYAML notices many mistakes a line late (an unclosed '[' where the next key starts)
and says what its parser was doing ("while parsing a block collection"). Each case
here pins the line and column of the mistake itself, with both loaders PyYAML has
(libyaml's, which load.py prefers, and the pure-Python one, whose wording differs).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from crate_deploy.errors import SiteError
from crate_deploy.site import load
from crate_deploy.site.load import parse_site

LOADERS = [yaml.SafeLoader, *([yaml.CSafeLoader] if hasattr(yaml, "CSafeLoader") else [])]


@pytest.fixture(params=LOADERS, ids=lambda loader: loader.__name__, autouse=True)
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(load, "_Loader", request.param)
    yield


def problem(text: str) -> str:
    with pytest.raises(SiteError) as caught:
        parse_site(text.encode(), "s.yaml")
    assert len(caught.value.problems) == 1
    return str(caught.value.problems[0])


def test_a_tab_is_named_at_the_tab() -> None:
    assert problem("project: demo\nbroker:\n  urls: [x]\nworkers:\n\t- name: a\n") == (
        "s.yaml:5:1: a tab character: YAML indents with spaces only; replace the tab with "
        "spaces")


def test_a_tab_after_spaces() -> None:
    assert problem("broker:\n  \turls: x\n").startswith("s.yaml:2:3: a tab character")


def test_a_key_indented_too_far() -> None:
    assert problem("project: demo\nbroker:\n  urls: [x]\n   heartbeat: 3\n") == (
        "s.yaml:4:4: this line is indented 3 space(s), but the line before it (line 3) is "
        "indented 2: the keys of one mapping start in the same column (indent with spaces, "
        "the same amount for each level)")


def test_a_key_indented_between_two_levels() -> None:
    assert problem("broker:\n    urls: [x]\n  heartbeat: 3\n").startswith(
        "s.yaml:3:3: this line is indented 2 space(s), but the line before it (line 2) is "
        "indented 4")


def test_a_key_below_a_key_that_has_a_value() -> None:
    assert problem("broker:\n  urls: x\n    heartbeat: 3\n") == (
        "s.yaml:3:5: this line is indented more than line 2, whose key already has a value "
        "on its line: line the keys up in one column")


def test_a_missing_dash_is_at_the_item_that_lacks_it() -> None:
    text = ("workers:\n  - name: a\n    queues: [x]\n  - name: b\n    queues: [x]\n"
            "  name: c\n  queues: [y]\n")
    assert problem(text) == (
        "s.yaml:6:3: a key where the list expects an item: start a new item with '- ' (like "
        "the items above), or indent this key to line up with the keys of the item above")


def test_a_list_item_where_a_key_belongs() -> None:
    assert problem("project: a\n- b\n").startswith(
        "s.yaml:2:1: a list item ('- ') where a key is expected")


@pytest.mark.parametrize(("text", "expected"), [
    ("project: demo\nqueues: [a, b\nworkers: 3\n",
     "s.yaml:2:9: this '[' is never closed: end the list with ']' on the same line"),
    ("project: demo\nqueues: [a, b\n",
     "s.yaml:2:9: this '[' is never closed: end the list with ']' on the same line"),
    ("project: demo\ncron: {minute: 1\nworkers: 3\n",
     "s.yaml:2:7: this '{' is never closed: end the mapping with '}' on the same line"),
], ids=["bracket", "bracket-at-end", "brace"])
def test_an_unclosed_bracket_is_at_the_bracket(text: str, expected: str) -> None:
    assert problem(text) == expected


@pytest.mark.parametrize("quote", ['"', "'"])
def test_an_unclosed_quote_is_at_the_quote(quote: str) -> None:
    assert problem(f"project: {quote}demo\nworkers: 3\n") == (
        f"s.yaml:1:10: this {quote} opens a quoted value that is never closed: end it with "
        f"{quote} on the same line")


@pytest.mark.parametrize("between", ["", "# a comment\n\n"], ids=["next", "after-a-comment"])
def test_a_missing_colon_is_at_its_line_not_the_next(between: str) -> None:
    assert problem(f"project demo\n{between}workers: 3\n") == (
        "s.yaml:1:1: it has no ':' after its key (key: value); YAML read it as one text with "
        "what follows")


def test_a_colon_without_a_space() -> None:
    assert problem("project:demo\nworkers: 3\n").startswith(
        "s.yaml:1:1: a ':' needs a space after it (key: value)")


def test_a_value_holding_colon_space() -> None:
    assert problem("app: a: b\n") == (
        "s.yaml:1:7: this value holds ': ', which YAML reads as another key: put the value "
        "in quotes (key: \"a: b\")")


def test_other_errors_keep_the_problem_without_the_parser_narration() -> None:
    message = problem('a: "\\q"\n')
    assert message.startswith("s.yaml:1:") and "invalid YAML: found unknown escape" in message
    assert "while" not in message
