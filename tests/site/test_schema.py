"""The published JSON Schema matches the model, is itself valid JSON Schema with ECMA-262
patterns, and every example validates against it.

Editors (yaml-language-server) and validators compile a schema's patterns as ECMA-262
regular expressions in unicode mode, which refuses Python-only escapes such as \\" and
\\'. Python's `re` (what jsonschema uses by default) accepts them, so both checks use
`regress`, a real ECMA-262 engine: the metaschema's "regex" format, and the "pattern"
keyword when the examples are validated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import regress
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticError

from crate_deploy.site.described import site_schema
from crate_deploy.site.fields import URL_PATTERN, Url
from tests.conftest import EXAMPLES, ROOT

SCHEMA = ROOT / "docs" / "site.schema.json"
EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.yaml"))


def ecma_regex(pattern: str) -> regress.Regex:
    return regress.Regex(pattern, "u")


FORMATS = FormatChecker()


@FORMATS.checks("regex", raises=(ValueError, regress.RegressError))  # type: ignore[untyped-decorator]
def _is_ecma_regex(instance: object) -> bool:
    if isinstance(instance, str):
        ecma_regex(instance)
    return True


def _ecma_pattern(validator: Any, pattern: str, instance: object,
                  schema: dict[str, Any]) -> Iterator[ValidationError]:
    if isinstance(instance, str) and ecma_regex(pattern).find(instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r} (ECMA-262)")


EcmaValidator = jsonschema.validators.extend(Draft202012Validator,
                                             {"pattern": _ecma_pattern})


def published() -> dict[str, Any]:
    return dict(json.loads(SCHEMA.read_text()))


def test_published_schema_is_current() -> None:
    """Regenerate with: scripts/update-docs"""
    assert published() == site_schema()


def test_schema_is_valid_against_the_metaschema_with_ecma_regexes() -> None:
    metaschema = Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=FORMATS)
    problems = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
                for error in metaschema.iter_errors(published())]
    assert problems == []


def test_the_metaschema_check_refuses_a_python_only_escape() -> None:
    """The check above can fail: the pattern this schema once had is refused."""
    metaschema = Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=FORMATS)
    old = {"type": "string", "pattern": r"^[^\s\x00-\x1f\x7f-\x9f'\"\\;]+$"}
    assert re.compile(old["pattern"])  # Python's re is content with it
    assert not metaschema.is_valid(old)


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_validates_against_the_schema(example: Path) -> None:
    first = example.read_text().splitlines()[0]
    relative = Path(first.split("$schema=")[1])
    assert (example.parent / relative).resolve() == SCHEMA
    validator = EcmaValidator(published(), format_checker=FORMATS)
    problems = [error.message for error in validator.iter_errors(
        yaml.safe_load(example.read_text()))]
    assert problems == []


def test_schema_refuses_unknown_keys() -> None:
    document = yaml.safe_load((EXAMPLES / "minimal.yaml").read_text())
    document["colour"] = "blue"
    with pytest.raises(jsonschema.ValidationError):
        EcmaValidator(published()).validate(document)


@pytest.mark.parametrize("url", [
    "amqp://h/v'x", 'amqp://h/v"x', "amqp://h/v\\x", "amqp://h/a;amqp://b", "amqp://h/ x",
    "amqp://h/\x00", "amqp://h/\x85", "amqp://h/\u2003",
])
def test_url_pattern_refuses_the_same_in_pydantic_and_ecma(url: str) -> None:
    """The ECMA-262 spelling of the URL pattern enforces what pydantic enforced."""
    assert ecma_regex(URL_PATTERN).find(url) is None
    with pytest.raises(PydanticError):
        TypeAdapter(Url).validate_python(url)


def test_url_pattern_accepts_a_plain_url_in_both() -> None:
    url = "amqp://crate:${BROKER_PASSWORD}@127.0.0.1:5672/crate?heartbeat=30"
    assert ecma_regex(URL_PATTERN).find(url) is not None
    assert TypeAdapter(Url).validate_python(url) == url
