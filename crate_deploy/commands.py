"""The render command: validate, render in memory, then plan and apply the changes."""

from __future__ import annotations

from pathlib import Path

import click

from crate_deploy.render import render_site
from crate_deploy.secrets import mask
from crate_deploy.target import choose_versions, version_stamp
from crate_deploy.validate import ValidatedSite, check_versions, validate_file
from crate_deploy.versions import TargetVersions
from crate_deploy.write import apply_changes, plan_changes

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
    config_dir = site.paths.config_dir or str(output_dir.resolve())
    stamp = version_stamp(site) if versions.source == "probed" else None
    rendering = render_site(site, str(site_path), config_dir, versions, stamp)
    for note in rendering.notes:
        click.echo(f"note: {note}", err=True)
    changes = plan_changes(output_dir, rendering.files)
    for change in changes:
        colour = _COLOURS[change.status]
        click.echo(f"{click.style(f'{change.status:>9}', fg=colour)}  {output_dir / change.path}")
        if show_diff and change.status != "unchanged":
            click.echo(change.diff(mask), nl=False)
    changed = sum(change.status != "unchanged" for change in changes)
    if check:
        click.echo(f"check: {changed} file(s) would change; nothing written")
        return 1 if changed else 0
    apply_changes(output_dir, changes)
    click.echo(f"{changed} file(s) changed, {len(changes) - changed} unchanged in {output_dir} "
               f"(for Celery {versions.celery}, {versions.source})")
    return 0


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
