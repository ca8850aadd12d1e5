"""What a render means for the running fleet, for a reviewer or a CI job.

`render --check` (or `--diff`, `--json`) names the services `launch --systemd` would
restart, start, stop and leave running once the change is installed: the same
decision (plan.restarts) launch makes, applied to the changes in the render directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from crate_deploy.commands import report
from crate_deploy.plan.names import UNIT_DIR
from crate_deploy.plan.restarts import ServiceChanges, plan_restarts
from crate_deploy.site.model import Site
from crate_deploy.write import FileChange


def rendered_service_changes(site: Site, changes: list[FileChange]) -> ServiceChanges:
    """The services a change of the render directory restarts once launched."""
    unit_prefix = f"{UNIT_DIR}/"
    units = {change.path.removeprefix(unit_prefix): change.status for change in changes
             if change.path.startswith(unit_prefix)}
    config = {change.path for change in changes
              if "/" not in change.path and change.status != "unchanged"}
    services = plan_restarts(site, units, config)
    # One host's share renders only its own units: the other hosts' are not ours to report.
    return ServiceChanges(*([name for name in group if name in units] for group in (
        services.restart, services.start, services.stop, services.left_running)))


def service_lines(services: ServiceChanges) -> list[str]:
    """The report in launch --systemd's own words ("would restart: ..."), one line each."""
    return report.service_lines(services.as_dict())


def json_report(output_dir: Path, changes: list[FileChange], services: ServiceChanges, *,
                written: bool, mask: Callable[[str], str] | None) -> str:
    """The whole render report as one JSON document (secrets masked in any diff)."""
    files = []
    for change in changes:
        entry = {"path": str(output_dir / change.path), "status": change.status}
        if mask is not None and change.status != "unchanged":
            entry["diff"] = change.diff(mask)
        files.append(entry)
    return report.json_document(str(output_dir), files, services.as_dict(), written=written)


def echo_service_changes(services: ServiceChanges) -> None:
    for line in report.services_block(services.as_dict()):
        report.echo(line)
