"""Names of everything crate-deploy renders: unit names and files in the output directory.

render, write, launch and status all agree on these through this one module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only annotations: `crate-deploy --help` need not build the models
    from crate_deploy.site.model import Site, Worker

DEFAULT_OUTPUT_DIR = Path("crate-deploy-out")
UNIT_DIR = "systemd"
APP_MODULE = "crate_deploy_app"
CONFIG_MODULE = "crate_deploy_celeryconfig"
# The settings module for the application's own processes that send tasks.
PRODUCER_MODULE = "crate_deploy_producer"
FLOWER_CONFIG = "flowerconfig.py"
DEPLOYMENT_FILE = "deployment.json"
MANIFEST_FILE = ".crate-deploy-manifest.json"
LAUNCH_STATE_FILE = ".crate-deploy-launch.json"
SITE_PATH_FILE = ".crate-deploy-site"  # where the last render's site file is (for drift)
LAUNCH_LOCK_FILE = ".crate-deploy-launch.lock"
# The queues `check` found the application itself sending to, for status to look at.
APP_QUEUES_FILE = ".crate-deploy-app-queues.json"
BEAT_SCHEDULE_FILE = "celerybeat-schedule"
FLOWER_DB_FILE = "flower.db"


def target_unit(site: Site) -> str:
    return f"{site.project}.target"


def worker_unit(site: Site, worker: Worker) -> str:
    return f"{site.project}-worker-{worker.name}.service"


def beat_unit(site: Site) -> str:
    return f"{site.project}-beat.service"


def flower_unit(site: Site) -> str:
    return f"{site.project}-flower.service"


def env_file_name(site: Site) -> str:
    return f"{site.project}.env"


def service_units(site: Site) -> list[str]:
    """Every service unit the site runs, workers first: the order launch starts them in."""
    units = [worker_unit(site, worker) for worker in site.workers]
    if site.beat.enabled:
        units.append(beat_unit(site))
    if site.flower.enabled:
        units.append(flower_unit(site))
    return units


def node_name(worker: Worker, host: str | None = None) -> str:
    """The worker's Celery node name on a host of the site's hosts: section; without one,
    %h, which Celery expands to the machine's host name."""
    return f"{worker.name}@{host or '%h'}"


def state_dir(site: Site, config_dir: str) -> str:
    """Where beat's schedule and Flower's database live."""
    if site.paths.state_dir:
        return site.paths.state_dir
    if site.systemd.scope == "system":
        return f"/var/lib/{site.project}"
    return f"{config_dir}/state"
