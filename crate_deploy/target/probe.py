"""Which Celery, kombu and Flower the fleet will run: stated, probed (and cached), or assumed.

`render` must stay fast and never import Celery, so the probe asks the target's own
interpreter once and the answer is kept in the output's deployment.json, reused
while the target's celery program and the distributions installed beside it are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import replace
from pathlib import Path

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
    if not executable.exists():
        return NEWEST_KNOWN, (f"{executable} is not on this machine: assuming Celery "
                              f"{NEWEST_KNOWN.celery} (the newest known); set celery_version "
                              "in the site file to choose")
    stamp = _stamp(executable)
    cached = _cached(output_dir, stamp)
    if cached is not None:
        return replace(cached, stamp=stamp), None
    try:
        return replace(probe(executable), stamp=stamp), None
    except VersionProbeError as exc:
        return NEWEST_KNOWN, (f"{exc}; assuming Celery {NEWEST_KNOWN.celery} (the newest "
                              "known); set celery_version in the site file to choose")


def _stamp(executable: Path) -> str:
    """The celery program's directory, and what is installed beside it: the distributions
    (name-version.dist-info) in its venv's site-packages. `pip install flower` adds a
    distribution but changes nothing in bin/, so the directory alone would miss it."""
    bin_dir = executable.resolve().parent
    state = [f"{bin_dir}:{bin_dir.stat().st_mtime_ns}"]
    for packages in sorted(bin_dir.parent.glob("lib/python3*/site-packages")):
        with contextlib.suppress(OSError):
            state.append(f"{packages}:{packages.stat().st_mtime_ns}")
            state.extend(sorted(entry.name for entry in packages.iterdir()
                                if entry.name.endswith((".dist-info", ".egg-info"))))
    digest = hashlib.sha256("\n".join(state).encode()).hexdigest()[:16]
    return f"{executable}:{digest}"


def _cached(output_dir: Path, stamp: str) -> TargetVersions | None:
    try:
        document = json.loads((output_dir / DEPLOYMENT_FILE).read_text(encoding="utf-8"))
        found = document["versions"]
        if found.get("stamp") != stamp or found.get("source") != "probed":
            return None
        return TargetVersions(found["celery"], found["kombu"], found["flower"], "probed")
    except (OSError, ValueError, KeyError, TypeError):
        return None
