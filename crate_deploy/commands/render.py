"""The render command: validate, render in memory, then plan and apply the changes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from crate_deploy.errors import CrateDeployError, UsageError
from crate_deploy.plan.names import DEPLOYMENT_FILE
from crate_deploy.render import render_site
from crate_deploy.secrets import Masker
from crate_deploy.site.model import PATH_PATTERN, Site
from crate_deploy.site.validate import ValidatedSite, check_versions, validate_file
from crate_deploy.target.probe import choose_versions, version_stamp
from crate_deploy.target.versions import TargetVersions
from crate_deploy.write import FileChange, apply_changes, plan_changes, render_lock

_COLOURS = {"created": "green", "changed": "yellow", "removed": "red", "unchanged": None}


def validate_command(site_path: Path, output_dir: Path) -> int:
    validated, versions = _validated(site_path, output_dir)
    site = validated.site
    click.echo(f"{site_path}: valid ({len(site.workers)} worker pool(s), {len(site.queues)} "
               f"queue(s); for Celery {versions.celery}, {versions.source})")
    return 0


def render_command(site_path: Path, output_dir: Path, *, check: bool, show_diff: bool) -> int:
    validated, versions = _validated(site_path, output_dir)
    site = validated.site
    config_dir = site.paths.config_dir or _plain_config_dir(output_dir)
    stamp = version_stamp(site) if versions.source == "probed" else None
    rendering = render_site(site, str(site_path), config_dir, versions, stamp)
    for note in [*rendering.notes, *_changed_queues(site, output_dir)]:
        click.echo(f"note: {note}", err=True)
    # One render at a time per directory (two at once mixed two sites' files); a check
    # waits for a render in progress, and creates nothing.
    with render_lock(output_dir, check=check):
        changes = plan_changes(output_dir, rendering.files)
        if not check:  # written first: a failure prints its error, not "created" lines
            apply_changes(output_dir, changes)
    _report(changes, output_dir, _masker(site) if show_diff else None)
    changed = sum(change.status != "unchanged" for change in changes)
    if check:
        click.echo(f"check: {changed} file(s) would change; nothing written")
        return 1 if changed else 0
    click.echo(f"{changed} file(s) changed, {len(changes) - changed} unchanged in {output_dir} "
               f"(for Celery {versions.celery}, {versions.source})")
    return 0


def _report(changes: list[FileChange], output_dir: Path, mask: Masker | None) -> None:
    for change in changes:
        colour = _COLOURS[change.status]
        click.echo(f"{click.style(f'{change.status:>9}', fg=colour)}  {output_dir / change.path}")
        if mask is not None and change.status != "unchanged":
            click.echo(change.diff(mask), nl=False)


def _validated(site_path: Path, output_dir: Path) -> tuple[ValidatedSite, TargetVersions]:
    """Validate the site, then against the Celery/Flower versions it will run on."""
    validated = validate_file(site_path)
    for warning in validated.warnings:
        click.echo(str(warning), err=True)
    versions, note = choose_versions(validated.site, output_dir)
    if note:
        click.echo(f"note: {note}", err=True)
    check_versions(validated, versions)
    return validated, versions


def _plain_config_dir(output_dir: Path) -> str:
    """The output directory as the units' config_dir: it must be a path a unit can hold."""
    path = str(output_dir.resolve())
    if re.fullmatch(PATH_PATTERN, path) is None:
        raise UsageError(f"the output directory {path!r} has characters a unit file cannot "
                         "hold (spaces, '%', quotes ...): render with -o into a plain path, or "
                         "set paths.config_dir in the site file")
    return path


def _masker(site: Site) -> Masker:
    """Mask the site's real secret values too, when this user can read them."""
    from crate_deploy.state.deployment import read_secrets

    try:
        return Masker(read_secrets(site).values())
    except CrateDeployError:
        return Masker()


_QUEUE_ARGUMENTS = ("durable", "type", "delivery_limit", "dead_letter")


def _changed_queues(site: Site, output_dir: Path) -> list[str]:
    """Warn when a queue the last render declared changes its arguments: RabbitMQ refuses
    to declare an existing queue differently (PRECONDITION_FAILED) and no worker starts."""
    try:
        document = json.loads((output_dir / DEPLOYMENT_FILE).read_text(encoding="utf-8"))
        before = {queue["name"]: queue for queue in document["site"]["queues"]}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    notes = []
    for queue in site.queues:
        old = before.get(queue.name)
        changed = [key for key in _QUEUE_ARGUMENTS
                   if old is not None and old.get(key) != getattr(queue, key)]
        if changed:
            notes.append(f"queue {queue.name} changes {', '.join(changed)}: RabbitMQ refuses "
                         "to redeclare an existing queue with other arguments "
                         "(PRECONDITION_FAILED); drain and delete it before the workers "
                         "restart, or give the queue a new name")
    return notes
