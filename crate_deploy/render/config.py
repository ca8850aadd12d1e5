"""The configuration every output format ships as is: the Celery entry module and config,
the producer settings for the application's own task senders, Flower's config, the plain
environment file, and deployment.json for launch and status.

The same bytes go into a systemd host's config directory and a Kubernetes ConfigMap.
"""

from __future__ import annotations

import json

from crate_deploy import __version__
from crate_deploy.plan import names
from crate_deploy.plan.compat import drop_unknown
from crate_deploy.plan.producer import producer_module
from crate_deploy.plan.services import Plan
from crate_deploy.plan.settings import (
    celery_settings,
    dead_letter_queues,
    delivery_note,
    delivery_settings,
    flower_options,
    pool_settings,
)
from crate_deploy.render.base import RenderedFile, Renderer
from crate_deploy.site.model import Site
from crate_deploy.target.versions import TargetVersions


class ConfigRenderer(Renderer):
    """Files in the config directory; `notes` says what the target's versions left out."""

    def __init__(self, site: Site, source: str, versions: TargetVersions,
                 stamp: str | None = None) -> None:
        super().__init__(site, source, versions)
        self.versions = versions
        self.stamp = stamp  # identifies the probed celery program, to reuse the probe
        self.notes: list[str] = []

    def files(self, plan: Plan) -> list[RenderedFile]:
        site, versions = self.site, self.versions
        settings, notes = drop_unknown(celery_settings(site), versions)
        self.notes.extend(notes)
        if note := delivery_note(site):
            self.notes.append(note)
        files = [
            self.file(f"{names.APP_MODULE}.py", "config/app.py.j2", app=site.app,
                      delivery=bool(delivery_settings(site))),
            self.file(f"{names.CONFIG_MODULE}.py", "config/celeryconfig.py.j2",
                      settings=settings, pool_settings=pool_settings(site),
                      dead_letter_queues=dead_letter_queues(site),
                      delivery=delivery_settings(site)),
            self.file(f"{names.PRODUCER_MODULE}.py", "config/producer.py.j2",
                      producer=producer_module(site, settings)),
            self.file(names.env_file_name(site), "config/env.j2",
                      environment=plain_environment(site.environment, plan.config_dir)),
            RenderedFile(names.DEPLOYMENT_FILE, self._deployment(plan)),
        ]
        if any(service.role == "flower" for service in plan.services):
            options, flower_notes = drop_unknown(flower_options(site, plan.state_dir), versions,
                                                 "flower")
            self.notes.extend(flower_notes)
            files.append(self.file(names.FLOWER_CONFIG, "config/flowerconfig.py.j2",
                                   options=options))
        return files

    def _deployment(self, plan: Plan) -> str:
        """What launch and status need to know about the rendered site, as JSON."""
        versions = self.versions
        document = {
            "generated_by": f"crate-deploy {__version__}",
            "source": self.common["source"],
            "config_dir": plan.config_dir,
            "state_dir": plan.state_dir,
            "target": names.target_unit(self.site),
            "services": [service.unit for service in plan.services],
            "versions": {"celery": versions.celery, "kombu": versions.kombu,
                         "flower": versions.flower, "source": versions.source,
                         "stamp": self.stamp},
            "site": self.site.model_dump(mode="json", exclude=_unrecorded(self.site)),
        }
        if plan.host is not None:
            document["host"] = plan.host
        return json.dumps(document, indent=2) + "\n"


def _unrecorded(site: Site) -> set[str] | None:
    """Keys left out of the recorded site while at their default, so that a site that
    does not use them renders as it did before they existed."""
    keys = {"hosts"} if not site.hosts else set()
    if site.delivery == "reliable":
        keys.add("delivery")
    return keys or None


def plain_environment(site_environment: dict[str, str], config_dir: str) -> dict[str, str]:
    """The non-secret environment: the site's, plus what makes the entry module importable."""
    environment = dict(site_environment)
    python_path = [config_dir, *filter(None, [environment.pop("PYTHONPATH", "")])]
    return {"PYTHONPATH": ":".join(python_path), "PYTHONUNBUFFERED": "1", **environment}
