"""The render command: validate, render in memory, then plan and apply the changes."""

from __future__ import annotations

from pathlib import Path

import click

from crate_deploy.render import render_site
from crate_deploy.secrets import mask
from crate_deploy.target import choose_versions, version_stamp
from crate_deploy.validate import validate_file
from crate_deploy.write import apply_changes, plan_changes

_COLOURS = {"created": "green", "changed": "yellow", "removed": "red", "unchanged": None}


def render_command(site_path: Path, output_dir: Path, *, check: bool, show_diff: bool) -> int:
    validated = validate_file(site_path)
    for warning in validated.warnings:
        click.echo(str(warning), err=True)
    site = validated.site
    config_dir = site.paths.config_dir or str(output_dir.resolve())
    versions, note = choose_versions(site, output_dir)
    if note:
        click.echo(f"note: {note}", err=True)
    stamp = version_stamp(site) if versions.source == "probed" else None
    rendering = render_site(site, str(site_path), config_dir, versions, stamp)
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
