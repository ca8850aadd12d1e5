"""The render command: validate, render in memory, then plan and apply the changes."""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from crate_deploy import facts
from crate_deploy.commands import render_record, report, unchanged
from crate_deploy.commands.hosts import render_shares, stale_hosts
from crate_deploy.commands.provenance import (
    record_site_path,
    refuse_foreign_site,
    source_name,
)
from crate_deploy.commands.review import (
    echo_service_changes,
    json_report,
    rendered_service_changes,
)
from crate_deploy.errors import CrateDeployError, UsageError
from crate_deploy.plan.names import (
    DEFAULT_OUTPUT_DIR,
    DEPLOYMENT_FILE,
    MANIFEST_FILE,
    SITE_PATH_FILE,
)
from crate_deploy.render import Rendering, render_site
from crate_deploy.secrets import Masker
from crate_deploy.site.fields import PATH_PATTERN
from crate_deploy.site.model import Site
from crate_deploy.site.sandbox import hidden_by_sandbox
from crate_deploy.site.validate import (
    ValidatedSite,
    check_target,
    check_versions,
    validate_file,
)
from crate_deploy.target.probe import choose_versions
from crate_deploy.target.versions import TargetVersions
from crate_deploy.write import FileChange, apply_changes, plan_changes, render_lock


def validate_command(site_path: Path) -> int:
    # The probe of the target's versions is cached in a render's deployment.json; validate
    # takes no output directory, so it reuses the default one's cache when there is one.
    validated, versions = _validated(site_path, DEFAULT_OUTPUT_DIR, None)
    site = validated.site
    report.echo(f"{site_path}: valid ({len(site.workers)} worker pool(s), {len(site.queues)} "
               f"queue(s); for Celery {versions.celery}, {versions.source})")
    return 0


def render_command(site_path: Path, output_dir: Path, *, check: bool, show_diff: bool,
                   as_json: bool = False, host: str | None = None, all_hosts: bool = False,
                   force: bool = False, verbose: bool = False, target: str = "systemd") -> int:
    attempt = unchanged.take_pending()  # what the fast path saw before it stepped aside
    # Every input read from here on, and any Python warning, for the record.
    with facts.recording() as ledger, _noting_warnings(ledger):
        said: list[str] = []  # stderr before the notes: what a re-render says again
        validated, versions = _validated(site_path, output_dir, said)
        check_target(validated, target)
        site = validated.site
        notes = stale_hosts(site, output_dir) if all_hosts else []
        rendered: list[tuple[Path, Rendering]] = []
        for share, directory in render_shares(site, output_dir, host, all_hosts):
            if not force:
                refuse_foreign_site(directory, site.project)
            rendering = _render(validated, versions, site_path, directory, share=share,
                                target=target, said=said)
            notes += [note for note in [*rendering.notes, *_changed_queues(site, directory)]
                      if note not in notes]
            rendered.append((directory, rendering))
        for note in notes:
            report.echo(f"note: {note}", err=True)
        mask = _masker(site) if show_diff else None

        def record(directory: Path, rendering: Rendering) -> None:
            if not all_hosts and not _probe_failed(site, versions):
                render_record.write_record(attempt, ledger, _outcome(
                    site, versions, site_path, directory, rendering, host, target, said))

        planned = _plan_and_apply(rendered, site_path, check=check, record=record)
    total = sum(len(changes) for _, changes in planned)
    changed = sum(change.status != "unchanged" for _, changes in planned for change in changes)
    if not as_json:  # after writing: a failure prints its error, not "created" lines
        _report(planned, mask, services=check or show_diff, site=site, verbose=verbose)
    if as_json:  # once written, so that "written": true is true
        report.echo(_json_reports(site, planned, written=not check, mask=mask))
    else:
        report.echo(report.summary_line(check=check, changed=changed, total=total,
                                       directory=str(output_dir), celery=versions.celery,
                                       source=versions.source))
    return 1 if check and changed else 0


def _plan_and_apply(rendered: list[tuple[Path, Rendering]], site_path: Path, *, check: bool,
                    record: Callable[[Path, Rendering], None] | None = None,
                    ) -> list[tuple[Path, list[FileChange]]]:
    """Each directory's changes, written unless checking, one render at a time per
    directory (two at once mixed two sites' files); a check waits for a render in
    progress, and creates nothing. Once a directory is written, `record` notes it for
    the next render's fast path (under the lock)."""
    planned = []
    with contextlib.ExitStack() as locks:
        for directory, rendering in rendered:
            locks.enter_context(render_lock(directory, check=check))
            changes = plan_changes(directory, rendering.files)
            if not check:
                apply_changes(directory, changes)
                record_site_path(directory, site_path)
                if record is not None:
                    record(directory, rendering)
            planned.append((directory, changes))
    return planned


def _outcome(site: Site, versions: TargetVersions, site_path: Path, directory: Path,
             rendering: Rendering, host: str | None, target: str,
             said: list[str]) -> render_record.Outcome:
    """What a render of this site, now written, prints when run again: the same warnings,
    the notes as they now stand (a queue's changed arguments were noted once), every file
    unchanged, no service to restart."""
    notes = [*rendering.notes, *_changed_queues(site, directory)]
    changes = [FileChange(file.path, "unchanged", file.content, file.content, file.mode)
               for file in rendering.files]
    services = rendered_service_changes(site, changes).as_dict()
    return render_record.Outcome(
        site=str(site_path), directory=str(directory), host=host, target=target,
        files=[(file.path, file.mode, file.content) for file in rendering.files],
        manifest=MANIFEST_FILE, state_files=[SITE_PATH_FILE],
        stderr=[*said, *(f"note: {note}" for note in notes)],
        report={"directory": str(directory), "celery": versions.celery,
                "source": versions.source, "services": services,
                "paths": [str(directory / file.path) for file in rendering.files]})


@contextlib.contextmanager
def _noting_warnings(ledger: facts.Ledger) -> Iterator[None]:
    """A Python warning printed during the render (a library's deprecation, say) is not in
    the record's words: such a render leaves no record, and the next one is full too."""
    shown = warnings.showwarning

    def noting(*args: Any, **kwargs: Any) -> None:
        ledger.doubt = "a Python warning was printed"
        shown(*args, **kwargs)

    warnings.showwarning = noting
    try:
        yield
    finally:
        warnings.showwarning = shown


def _probe_failed(site: Site, versions: TargetVersions) -> bool:
    """The target's celery is here but its versions could not be probed (a timeout?): the
    next render probes again, and may know more."""
    try:
        return (versions.source == "assumed" and not site.celery_version
                and facts.exists(site.celery_executable))
    except OSError:
        return True


def _report(planned: list[tuple[Path, list[FileChange]]], mask: Masker | None, *,
            services: bool, site: Site, verbose: bool) -> None:
    """Each changed file's status (and its diff, secrets masked, with --diff; unchanged
    ones only with -v); with --check or --diff, what launch --systemd would then restart."""
    colour = report.on_terminal()  # the status column, coloured on a terminal
    for directory, changes in planned:
        for change in changes:
            if change.status == "unchanged" and not verbose:
                continue  # counted in the summary line
            report.echo(report.file_line(change.status, str(directory / change.path),
                                         colour=colour))
            if mask is not None and change.status != "unchanged":
                report.echo(change.diff(mask), nl=False)
        if services:
            echo_service_changes(rendered_service_changes(site, changes))


def _json_reports(site: Site, planned: list[tuple[Path, list[FileChange]]], *, written: bool,
                  mask: Masker | None) -> str:
    """One JSON report; with --all-hosts, one per host's directory under "hosts"."""
    reports = [json_report(directory, changes, rendered_service_changes(site, changes),
                           written=written, mask=mask) for directory, changes in planned]
    if len(reports) == 1:
        return reports[0]
    by_host = {directory.name: json.loads(report)
               for (directory, _), report in zip(planned, reports, strict=True)}
    return json.dumps({"written": written, "hosts": by_host}, indent=2)


def render_in_memory(site_path: Path, output_dir: Path, source: str | None = None,
                     share: str | None = None,
                     ) -> tuple[ValidatedSite, TargetVersions, Rendering]:
    """Validate and render the site (or one host's share) for output_dir, writing
    nothing. `source` is the site's name in the files' headers (default: its file name)."""
    validated, versions = _validated(site_path, output_dir, None)
    rendering = _render(validated, versions, site_path, output_dir, source, share)
    return validated, versions, rendering


def _render(validated: ValidatedSite, versions: TargetVersions, site_path: Path,
            directory: Path, source: str | None = None, share: str | None = None,
            target: str = "systemd", said: list[str] | None = None) -> Rendering:
    """The files of a site (or share); with `said`, the warning when the output directory
    is hidden from the services is printed and noted there."""
    site = validated.site
    config_dir = site.paths.config_dir or _plain_config_dir(directory)
    if said is not None and site.paths.config_dir is None:
        _warn_if_hidden(site, config_dir, said)
    # The probe's stamp came with the versions, taken once: not again for each host's share.
    return render_site(site, source or source_name(site_path), config_dir, versions,
                       versions.stamp, share, target)


def _validated(site_path: Path, output_dir: Path,
               said: list[str] | None) -> tuple[ValidatedSite, TargetVersions]:
    """Validate the site, then against the Celery/Flower versions it will run on; each
    warning printed is noted in `said`, when given."""
    validated = validate_file(site_path)
    for warning in validated.warnings:
        _say(str(warning), said)
    versions, note = choose_versions(validated.site, output_dir)
    if note:
        _say(f"note: {note}", said)
    for warning in check_versions(validated, versions):
        _say(str(warning), said)
    return validated, versions


def _say(line: str, said: list[str] | None) -> None:
    report.echo(line, err=True)
    if said is not None:
        said.append(line)


def _plain_config_dir(output_dir: Path) -> str:
    """The output directory as the units' config_dir: it must be a path a unit can hold."""
    path = facts.resolve(output_dir)
    if re.fullmatch(PATH_PATTERN, path) is None:
        raise UsageError(f"the output directory {path!r} has characters a unit file cannot "
                         "hold (spaces, '%', quotes ...): render with -o into a plain path, or "
                         "set paths.config_dir in the site file")
    return path


def _warn_if_hidden(site: Site, config_dir: str, said: list[str]) -> None:
    """The output directory is the units' config_dir by default: systemd's sandbox may
    hide it (a render into ~/out or /tmp/out), which sandbox.py cannot see in the site."""
    hidden = hidden_by_sandbox(site, config_dir)
    if hidden is not None:
        _say(f"warning: the output directory {config_dir} is the units' config_dir "
             f"(paths.config_dir is unset) and is under {hidden[0]}, so under systemd the "
             "services cannot read their config there: render into another directory, or "
             "set paths.config_dir", said)


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
