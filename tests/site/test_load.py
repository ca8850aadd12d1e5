"""load.py: YAML with line marks, and refusal of what YAML lets through silently."""

from __future__ import annotations

import pytest

from crate_deploy.errors import SiteError
from crate_deploy.site.load import Mark, format_loc, parse_site


def problems(raw: bytes) -> list[str]:
    with pytest.raises(SiteError) as caught:
        parse_site(raw, "s.yaml")
    return [str(problem) for problem in caught.value.problems]


def test_marks_point_at_keys_and_list_items() -> None:
    site = parse_site(b"a: 1\nworkers:\n  - name: x\n    concurrency: 3\n", "s.yaml")
    assert site.data == {"a": 1, "workers": [{"name": "x", "concurrency": 3}]}
    assert site.marks[("workers", 0, "concurrency")] == Mark(4, 5)
    assert site.locate(("workers", 0, "missing")) == Mark(3, 5)
    assert site.locate(("nowhere",)) == Mark(1, 1)


def test_format_loc() -> None:
    assert format_loc(("workers", 1, "concurrency")) == "workers[1].concurrency"
    assert format_loc((0, "a")) == "[0].a"


def test_duplicate_keys_are_refused_with_both_lines() -> None:
    assert problems(b"project: a\nproject: b\n") == [
        "s.yaml:2:1: project: duplicate key (first given on line 1)"]


def test_syntax_error_is_at_the_mistake_not_where_yaml_noticed_it() -> None:
    assert problems(b"a: [1, 2\nb: 3\n") == [
        "s.yaml:1:4: this '[' is never closed: end the list with ']' on the same line"]


@pytest.mark.parametrize(("raw", "expected"), [
    (b"a: \x00b\n", "s.yaml:1:4: control character U+0000 is not allowed in a site file"),
    (b"a: b\nc: \x1b[31m\n", "s.yaml:2:4: control character U+001B is not allowed in a site file"),
    (b"a: caf\xe9\n", "s.yaml:1:7: the site file is not valid UTF-8 (byte 0xe9)"),
    (b"", "s.yaml:1:1: the site file is empty"),
    (b"- a\n- b\n", "s.yaml:1:1: the site file must be a mapping of keys to values"),
    (b"a:\n  <<: {b: 1}\n", "s.yaml:2:3: a: YAML merge keys (<<) are not supported: "
                            "write the keys out"),
    (b"? [a, b]\n: 1\n", "s.yaml:1:3: keys must be text, not ['a', 'b']"),
])
def test_hostile_bytes_are_refused_with_a_position(raw: bytes, expected: str) -> None:
    assert problems(raw) == [expected]


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for index in range(8):
        previous, name = chr(ord("a") + index), chr(ord("b") + index)
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    found = problems("\n".join(lines).encode())
    assert len(found) == 1
    assert "expands to more than 100000 values (an alias bomb?)" in found[0]


def test_recursive_alias_is_refused() -> None:
    found = problems(b"a: &a [*a]\n")
    assert "nested more than 32 levels deep" in found[0]


def test_huge_file_is_refused_before_parsing() -> None:
    assert problems(b"#" * (1024 * 1024 + 1)) == [
        "s.yaml:1:1: the site file is larger than 1024 KiB"]
