"""Which services a change restarts: the one decision `launch --systemd` acts on and
`render --check` reports, so a reviewed change and an applied one cannot disagree.

Like an Ansible handler, a service restarts only when one of its own files changed:
its unit, the config every service reads (entry module, Celery config, environment
file), or -- for Flower alone -- flowerconfig.py. A new unit is not running yet:
starting the target starts it. A unit no longer rendered is stopped and disabled.
Every other service is left running, untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crate_deploy.plan import names

if TYPE_CHECKING:
    from crate_deploy.site.model import Site


@dataclass(frozen=True)
class ServiceChanges:
    """What applying a change does to each service, in start order."""

    restart: list[str]
    start: list[str]
    stop: list[str]
    left_running: list[str]

    def as_dict(self) -> dict[str, list[str]]:
        return {"restart": self.restart, "start": self.start, "stop": self.stop,
                "left_running": self.left_running}


def shared_config_files(site: Site) -> set[str]:
    """Config every service reads: a change to one restarts them all."""
    # The producer module too: an app that imports it in its own settings reads it in
    # every service.
    return {f"{names.APP_MODULE}.py", f"{names.CONFIG_MODULE}.py",
            f"{names.PRODUCER_MODULE}.py", names.env_file_name(site)}


def plan_restarts(site: Site, units: Mapping[str, str],
                  changed_config: Iterable[str]) -> ServiceChanges:
    """The services `site` runs, sorted by what applying the change does to them.

    `units` maps a unit's name to what the change does to its file (created, changed,
    unchanged, removed); `changed_config` names the config files (by file name) whose
    content differs from what the running services were started with.
    """
    config = set(changed_config)
    everything = bool(config & shared_config_files(site))
    flower = names.flower_unit(site) if site.flower.enabled else None
    restart, start, left_running = [], [], []
    for service in names.service_units(site):
        status = units.get(service, "unchanged")
        if status == "created":
            start.append(service)
        elif (everything or status == "changed"
              or (service == flower and names.FLOWER_CONFIG in config)):
            restart.append(service)
        else:
            left_running.append(service)
    stop = [unit for unit, status in units.items() if status == "removed"]
    return ServiceChanges(restart, start, stop, left_running)
