"""Site -> files: pure functions; nothing here touches the disk (write.py does).

The site is turned into a process plan once (crate_deploy.plan.services); each output
format is a module here with a Renderer subclass reading that plan (config.py: the
files every format ships; systemd.py: units). One Jinja environment (jinja.py) with
StrictUndefined renders templates/; values reach the output only through escape.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crate_deploy.plan.services import build_plan
from crate_deploy.render.base import RenderedFile
from crate_deploy.render.config import ConfigRenderer
from crate_deploy.render.escape import python_literal, seconds, unit_word
from crate_deploy.render.systemd import SystemdRenderer
from crate_deploy.site.model import Site
from crate_deploy.target.versions import TargetVersions

__all__ = ["RenderedFile", "Rendering", "python_literal", "render_site", "seconds", "unit_word"]


@dataclass(frozen=True)
class Rendering:
    """Everything one render produces: its files and the notes it prints."""

    files: list[RenderedFile]
    notes: list[str] = field(default_factory=list)


def render_site(site: Site, source: str, config_dir: str, versions: TargetVersions,
                stamp: str | None = None, host: str | None = None,
                target: str = "systemd") -> Rendering:
    """Every file the site needs, with config_dir as the place they will live on the server
    (for a site with hosts:, every file one host's share needs).

    `stamp` identifies the probed celery program, so the next render can reuse the probe;
    `target` is systemd (units) or kubernetes (manifests), beside the same config files.
    """
    plan = build_plan(site, config_dir, host)
    config = ConfigRenderer(site, source, versions, stamp=stamp)
    config_files = config.files(plan)
    if target == "kubernetes":
        from crate_deploy.render.kubernetes import KubernetesRenderer

        output = KubernetesRenderer(site, source, versions, config_files).files(plan)
    else:
        output = SystemdRenderer(site, source, versions).files(plan)
    files = [*config_files, *output]
    return Rendering(sorted(files, key=lambda f: f.path), config.notes)
