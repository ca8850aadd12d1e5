"""The render command: validate, render in memory, then plan and apply the changes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from crate_deploy.commands.review import (
    echo_service_changes,
    json_report,
    rendered_service_changes,
)
from crate_deploy.errors import CrateDeployError, UsageError
from crate_deploy.plan.names import DEPLOYMENT_FILE
from crate_deploy.render import Rendering, render_site
from crate_deploy.secrets import Masker
from crate_deploy.site.model import PATH_PATTERN, Site
from crate_deploy.site.validate import ValidatedSite, check_versions, validate_file
from crate_deploy.target.probe import choose_versions, version_stamp
from crate_deploy.target.versions import TargetVersions
from crate_deploy.write import FileChange, apply_changes, plan_changes

_COLOURS = {"created": "green", "changed": "yellow", "removed": "red", "unchanged": None}


def validate_command(site_path: Path, output_dir: Path) -> int:
    validated, versions = _validated(site_path, output_dir)
    site = validated.site
    click.echo(f"{site_path}: valid ({len(site.workers)} worker pool(s), {len(site.queues)} "
               f"queue(s); for Celery {versions.celery}, {versions.source})")
    return 0


def render_command(site_path: Path, output_dir: Path, *, check: bool, show_diff: bool,
                   as_json: bool = False) -> int:
    validated, versions, rendering = render_in_memory(site_path, output_dir)
    site = validated.site
    for note in [*rendering.notes, *_changed_queues(site, output_dir)]:
        click.echo(f"note: {note}", err=True)
    changes = plan_changes(output_dir, rendering.files)
    mask = _masker(site) if show_diff else None
    changed = sum(change.status != "unchanged" for change in changes)
    if not as_json:
        _echo_changes(output_dir, changes, mask)
        if check or show_diff:
            echo_service_changes(rendered_service_changes(site, changes))
    if not check:
        apply_changes(output_dir, changes)
    if as_json:  # once written, so that "written": true is true
        services = rendered_service_changes(site, changes)
        click.echo(json_report(output_dir, changes, services, written=not check, mask=mask))
    elif check:
        click.echo(f"check: {changed} file(s) would change; nothing written")
    else:
        click.echo(f"{changed} file(s) changed, {len(changes) - changed} unchanged in "
                   f"{output_dir} (for Celery {versions.celery}, {versions.source})")
    return 1 if check and changed else 0


def _echo_changes(output_dir: Path, changes: list[FileChange],
                  mask: Masker | None) -> None:
    for change in changes:
        colour = _COLOURS[change.status]
        click.echo(f"{click.style(f'{change.status:>9}', fg=colour)}  {output_dir / change.path}")
        if mask is not None and change.status != "unchanged":
            click.echo(change.diff(mask), nl=False)


def render_in_memory(site_path: Path, output_dir: Path, source: str | None = None,
                     ) -> tuple[ValidatedSite, TargetVersions, Rendering]:
    """Validate and render the site for output_dir, writing nothing. `source` is the site's
    name in the files' headers (default: site_path as given)."""
    validated, versions = _validated(site_path, output_dir)
    site = validated.site
    config_dir = site.paths.config_dir or _plain_config_dir(output_dir)
    stamp = version_stamp(site) if versions.source == "probed" else None
    rendering = render_site(site, source or str(site_path), config_dir, versions, stamp)
    return validated, versions, rendering


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
