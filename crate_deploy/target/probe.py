"""Which Celery, kombu and Flower the fleet will run: stated, probed (and cached), or assumed.

`render` must stay fast and never import Celery, so the probe asks the target's own
interpreter once and the answer is kept in the output's deployment.json, reused
while the target's celery program and the distributions installed beside it are unchanged.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from crate_deploy import facts
from crate_deploy.plan.names import DEPLOYMENT_FILE
from crate_deploy.site.model import Site
from crate_deploy.target.versions import NEWEST_KNOWN, TargetVersions, VersionProbeError, probe


def choose_versions(site: Site, output_dir: Path) -> tuple[TargetVersions, str | None]:
    """The versions to render for, and a note to show the user when they were not probed."""
    versions, note = _choose(site, output_dir)
    if site.flower_version:
        versions = replace(versions, flower=site.flower_version)
    return versions, note


def _choose(site: Site, output_dir: Path) -> tuple[TargetVersions, str | None]:
    if site.celery_version:
        return TargetVersions(site.celery_version, None, None, "site"), None
    executable = Path(site.celery_executable)
    if not facts.exists(executable):
        return NEWEST_KNOWN, (f"{executable} is not on this machine: assuming Celery "
                              f"{NEWEST_KNOWN.celery} (the newest known); set celery_version "
                              "in the site file to choose")
    stamp = facts.venv_stamp(str(executable))
    cached = _cached(output_dir, stamp)
    if cached is not None:
        return replace(cached, stamp=stamp), None
    try:
        return replace(probe(executable), stamp=stamp), None
    except VersionProbeError as exc:
        return NEWEST_KNOWN, (f"{exc}; assuming Celery {NEWEST_KNOWN.celery} (the newest "
                              "known); set celery_version in the site file to choose")




def _cached(output_dir: Path, stamp: str) -> TargetVersions | None:
    try:
        document = json.loads((output_dir / DEPLOYMENT_FILE).read_text(encoding="utf-8"))
        found = document["versions"]
        if found.get("stamp") != stamp or found.get("source") != "probed":
            return None
        return TargetVersions(found["celery"], found["kombu"], found["flower"], "probed")
    except (OSError, ValueError, KeyError, TypeError):
        return None
