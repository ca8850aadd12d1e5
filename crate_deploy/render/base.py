"""What every renderer shares: the file it returns and the values its templates see.

A renderer is a pure function of the site, the process plan and the target versions:
it returns files (path, content, mode) and touches no disk; write.py does that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crate_deploy import __version__
from crate_deploy.plan.services import Plan
from crate_deploy.render.jinja import render_template
from crate_deploy.site.model import Site
from crate_deploy.target.versions import TargetVersions


@dataclass(frozen=True)
class RenderedFile:
    """One output file of a render, in memory: nothing is written until write.py's turn."""

    path: str  # relative to the output directory, '/'-separated
    content: str
    mode: int = 0o644


class Renderer:
    """Base of every output format; subclasses implement files()."""

    comment = "#"

    def __init__(self, site: Site, source: str, versions: TargetVersions) -> None:
        self.site = site
        self.common = {"site": site, "source": source, "version": __version__,
                       "project": site.project, "systemd": site.systemd,
                       "scope": site.systemd.scope, "versions": versions}

    def files(self, plan: Plan) -> list[RenderedFile]:
        raise NotImplementedError

    def file(self, path: str, template: str, **values: Any) -> RenderedFile:
        return RenderedFile(path, render_template(template, comment=self.comment,
                                                  **self.common, **values))
