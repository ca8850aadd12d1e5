"""The site models' field descriptions, read on demand: for the JSON Schema and the
site-file reference only.

A field's description is the string right below it in model.py or kubernetes.py.
pydantic's use_attribute_docstrings would read them whenever the models are imported,
for every command: it finds each class's source through inspect (which resolves the
real path of every loaded module) and parses it, about 25 ms of a render, for text that
only `schema`, the README reference and docs/site.schema.json show. So they are read
here when asked for, as pydantic reads them, and the models rebuilt to carry them.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
from pathlib import Path
from types import ModuleType
from typing import Any

from crate_deploy.site import kubernetes, model
from crate_deploy.site.compat_keys import with_deprecated_keys


def site_schema() -> dict[str, Any]:
    """The site file's JSON Schema, descriptions and deprecated spellings included (what
    docs/site.schema.json publishes)."""
    describe_fields()
    return with_deprecated_keys(model.Site.model_json_schema())


@functools.cache
def describe_fields() -> None:
    """Give every site model's fields their docstrings as descriptions, once per process.

    Models are rebuilt in the order they are defined, kubernetes.py's first (its sections
    are fields of model.py's), so that an enclosing model's schema takes its fields'
    rebuilt ones."""
    for module in (kubernetes, model):
        for name, docstrings in _field_docstrings(module).items():
            cls = getattr(module, name)
            for field, info in cls.model_fields.items():
                if info.description is None and field in docstrings:
                    info.description = docstrings[field]
            cls.model_rebuild(force=True)


def _field_docstrings(module: ModuleType) -> dict[str, dict[str, str]]:
    """{class name: {field: docstring}} for the classes of a module with documented fields,
    in source order: a string statement right after an annotated name, cleaned as
    inspect.cleandoc does (pydantic's use_attribute_docstrings rule)."""
    tree = ast.parse(Path(str(module.__file__)).read_text(encoding="utf-8"))
    found: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docstrings = {}
        for field, after in itertools.pairwise(node.body):
            if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docstrings[field.target.id] = inspect.cleandoc(after.value.value)
        if docstrings:
            found[node.name] = docstrings
    return found
