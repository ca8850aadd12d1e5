"""The one Jinja environment every renderer uses: StrictUndefined, escaping filters only.

Templates live in templates/ at the top of a source checkout (installed into the
package as crate_deploy/templates), one folder per output format.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from crate_deploy import template_dirs
from crate_deploy.errors import RenderError
from crate_deploy.render.compiled import bytecode_cache
from crate_deploy.render.escape import (
    env_value,
    kubernetes_expansion,
    python_literal,
    seconds,
    unit_assignment,
    unit_command,
    unit_text,
    yaml_scalar,
    yaml_text_mapping,
)


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - we render config files, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(py=python_literal, unit_env=unit_assignment, unit_command=unit_command,
                       unit_text=unit_text, env_value=env_value, seconds=seconds,
                       yaml=yaml_scalar, kube_literal=kubernetes_expansion,
                       yaml_text_mapping=yaml_text_mapping)
    # Set last: its key covers the options and filters above. Compiling the templates
    # cost every render 15-25 ms; compiled.py says why the cache is safe to run from.
    env.bytecode_cache = bytecode_cache(env)
    return env


def templates_dir() -> Path:
    """templates/ inside the installed package, or at the top of a source checkout."""
    candidates = template_dirs()
    for candidate in candidates:
        if Path(candidate).is_dir():
            return Path(candidate)
    raise RenderError(f"the templates directory is missing (looked in {candidates[0]} and "
                      f"{candidates[1]})")


def render_template(template: str, **values: Any) -> str:
    try:
        return environment().get_template(template).render(**values)
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {template}: {exc}") from None
