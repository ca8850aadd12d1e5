"""The published JSON Schema matches the model, and every example validates against it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from crate_deploy.site.compat_keys import with_deprecated_keys
from crate_deploy.site.model import Site
from tests.conftest import EXAMPLES, ROOT

SCHEMA = ROOT / "docs" / "site.schema.json"
EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.yaml"))


def test_published_schema_is_current() -> None:
    """Regenerate with: crate-deploy schema > docs/site.schema.json"""
    assert json.loads(SCHEMA.read_text()) == with_deprecated_keys(Site.model_json_schema())


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_validates_against_the_schema(example: Path) -> None:
    first = example.read_text().splitlines()[0]
    relative = Path(first.split("$schema=")[1])
    assert (example.parent / relative).resolve() == SCHEMA
    jsonschema.validate(yaml.safe_load(example.read_text()), json.loads(SCHEMA.read_text()))


def test_schema_refuses_unknown_keys() -> None:
    document = yaml.safe_load((EXAMPLES / "minimal.yaml").read_text())
    document["colour"] = "blue"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, json.loads(SCHEMA.read_text()))
