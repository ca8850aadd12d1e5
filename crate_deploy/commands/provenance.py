"""Which site an output directory holds: the source a render records, and the refusal to
render one project over another's files.

The source goes into every unit's header and deployment.json, so it must not depend on
the directory render ran from: the same site rendered from elsewhere (`render
examples/site.yaml`, then `cd examples; render site.yaml`) would otherwise "change"
every unit, and `launch --systemd` would restart the whole fleet for nothing. Nor on
where the checkout lies: `render --check` in CI must match the server's render. So it
is the site file's name alone; where the file itself lies is kept beside the render,
out of every rendered file (SITE_PATH_FILE), for `drift` to find it again.
"""

from __future__ import annotations

import json
from pathlib import Path

from crate_deploy import facts
from crate_deploy.errors import RenderError
from crate_deploy.plan.names import DEPLOYMENT_FILE, SITE_PATH_FILE
from crate_deploy.state.deployment import recorded_site_path
from crate_deploy.write import write_file_atomically


def source_name(site_path: Path) -> str:
    """The site file's name, as one printable line (it goes into unit comments)."""
    text = Path(facts.resolve(site_path)).name
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text


def refuse_foreign_site(output_dir: Path, project: str) -> None:
    """Refuse to render `project` where another project's render lives: the write would
    remove that site's files (and a later launch would stop its fleet)."""
    try:
        document = json.loads((output_dir / DEPLOYMENT_FILE).read_text(encoding="utf-8"))
        other = str(document["site"]["project"])
        source = str(document.get("source", "?"))
    except (OSError, ValueError, KeyError, TypeError):
        return  # nothing rendered there yet (or not by us: write.py guards those files)
    if other != project:
        raise RenderError(f"{output_dir} holds the rendered site of project {other!r} (from "
                          f"{source}), not {project!r}: rendering here would remove its files; "
                          "render into another directory, or pass --force to replace it")


def record_site_path(output_dir: Path, site_path: Path) -> None:
    """Note where the rendered site file lies, for `drift` run from anywhere (rewritten
    only when it moved: an unchanged render touches nothing)."""
    resolved = Path(facts.resolve(site_path))
    if recorded_site_path(output_dir) != resolved:
        write_file_atomically(output_dir / SITE_PATH_FILE, f"{resolved}\n")
