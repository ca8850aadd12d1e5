"""Fit the rendered settings to the target's Celery and Flower versions.

A feature the site asks for explicitly that the target lacks is a validation error
naming the version that brought it; a default crate-deploy would add but the target
does not know is left out, and render says so once. The tables are in versions.py.
"""

from __future__ import annotations

from collections.abc import Iterator

from crate_deploy.plan.settings import Settings
from crate_deploy.site.load import Loc
from crate_deploy.site.model import Site
from crate_deploy.target.versions import Kind, TargetVersions, release, unsupported

# Worker fields of the site file and the Celery setting (or worker option) each becomes.
WORKER_FEATURES: dict[str, tuple[Kind, str]] = {
    "soft_shutdown_timeout": ("setting", "worker_soft_shutdown_timeout"),
    "soft_shutdown_on_idle": ("setting", "worker_enable_soft_shutdown_on_idle"),
    "detect_quorum_queues": ("setting", "worker_detect_quorum_queues"),
    "disable_prefetch": ("worker", "--disable-prefetch"),
}


def explicit_features(site: Site) -> Iterator[tuple[Loc, Kind, str]]:
    """Every version-dependent feature the site file asks for, with where it asks."""
    for index, worker in enumerate(site.workers):
        for field, (kind, name) in WORKER_FEATURES.items():
            if getattr(worker, field) is not None:
                yield ("workers", index, field), kind, name
    for index, queue in enumerate(site.queues):
        if queue.type == "quorum":
            # Before 5.5 workers ask for global QoS, which quorum queues refuse
            # (NOT_IMPLEMENTED on basic.consume): 5.5 detects them and stops asking.
            yield ("queues", index, "type"), "setting", "worker_detect_quorum_queues"
    if site.default_queue_type is not None:
        yield ("default_queue_type",), "setting", "task_default_queue_type"
    if site.flower.enabled and site.flower.read_only is not None:
        yield ("flower", "read_only"), "flower", "read_only"


def version_findings(site: Site, versions: TargetVersions) -> list[tuple[Loc, str, str]]:
    """An error for each explicit feature the target's versions do not have (and a warning
    where the target's behaviour needs a setting the site lacks)."""
    findings = _exit_status_findings(site, versions)
    for loc, kind, name in explicit_features(site):
        for _, since in unsupported([name], versions, kind):
            needs = f"needs {'Flower' if kind == 'flower' else 'Celery'} {since[0]}.{since[1]}"
            if kind == "flower" and versions.flower is None:
                message = (f"{needs} or later, and the target's Flower version is unknown: set "
                           "flower_version in the site file, or remove this")
            else:
                product, have = ("Flower", versions.flower) if kind == "flower" else (
                    "Celery", versions.celery)
                message = (f"{needs} or later, but the target has {have} ({versions.source}); "
                           f"remove it or upgrade the application's {product}")
            findings.append((loc, message, "error"))
    return findings


def drop_unknown(settings: Settings, versions: TargetVersions,
                 kind: Kind = "setting") -> tuple[Settings, list[str]]:
    """The settings the target knows, and a note for each default left out."""
    missing = dict(unsupported(settings, versions, kind))
    product = "Flower" if kind == "flower" else "Celery"
    have = versions.flower if kind == "flower" else versions.celery
    notes = [f"left out {name}: {product} {have} does not know it (added in "
             f"{since[0]}.{since[1]})" for name, since in missing.items()]
    return {key: value for key, value in settings.items() if key not in missing}, notes


def _exit_status_findings(site: Site, versions: TargetVersions) -> list[tuple[Loc, str, str]]:
    """Celery < 5.3 workers exit 0 after an unrecoverable error (the 5.2 command returns
    the exit code instead of exiting with it; 5.3.0 calls ctx.exit). On a cluster the
    common one is a classic queue whose node is down (404 on declare): measured in
    tests/integration/test_cluster_faults.py, Restart=on-failure then left the pool down
    for good after the node was back."""
    if release(versions.celery) >= (5, 3, 0) or len(site.broker.urls) < 2 \
            or site.systemd.restart == "always":
        return []
    return [(("systemd", "restart"), f"Celery {versions.celery} workers exit with status 0 "
             "after an unrecoverable error, such as a classic queue whose broker node is "
             "down, so on-failure leaves the pool down after the node is back: use "
             "restart: always with several broker URLs", "warning")]
