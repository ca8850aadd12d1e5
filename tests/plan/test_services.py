"""The process plan: what a foreground launch runs is what the rendered unit says.

Both come from crate_deploy.plan.services; this reads each rendered unit back the way
systemd would (crate_deploy.systemd.units) and compares it, field by field, with the
process the foreground launch builds from the plan, for every shipped example.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crate_deploy.plan.services import build_plan
from crate_deploy.render import render_site
from crate_deploy.run.policy import process_spec_from_service
from crate_deploy.run.specs import process_spec
from crate_deploy.site.model import Site
from crate_deploy.site.validate import validate_file
from crate_deploy.systemd.units import load_service
from crate_deploy.target.versions import NEWEST_KNOWN
from tests.conftest import EXAMPLES

BASE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
EXAMPLE_FILES = ["minimal.yaml", "site.yaml", "demo/site.yaml"]


def _render(example: str, directory: Path) -> tuple[Site, Path]:
    site = validate_file(EXAMPLES / example).site
    if site.secrets_file:  # the example's secrets live on its server: use a local stand-in
        secrets = directory / "secrets.env"
        secrets.write_text("BROKER_PASSWORD=b\nFLOWER_PASSWORD=f\nREDIS_PASSWORD=r\n")
        site = site.model_copy(update={"secrets_file": str(secrets)})
    for file in render_site(site, example, str(directory), NEWEST_KNOWN).files:
        (directory / file.path).parent.mkdir(parents=True, exist_ok=True)
        (directory / file.path).write_text(file.content)
    return site, directory


@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_foreground_launch_runs_what_each_unit_says(example: str, tmp_path: Path) -> None:
    site, directory = _render(example, tmp_path)
    plan = build_plan(site, str(directory))
    assert plan.services, "every example runs at least one pool"
    for service in plan.services:
        from_unit = process_spec_from_service(
            load_service(directory / "systemd" / service.unit, BASE_ENV))
        from_plan = process_spec(service, BASE_ENV)
        assert from_plan == from_unit, service.name


def test_plan_orders_pools_then_beat_then_flower() -> None:
    site = validate_file(EXAMPLES / "demo/site.yaml").site
    plan = build_plan(site, "/srv/rendered")
    assert [service.role for service in plan.services] == ["worker", "worker", "beat", "flower"]
    beat = plan.service("demo-beat")
    assert beat.singleton and beat.readiness.kind == "running"
    flower = plan.service("demo-flower")
    assert (flower.readiness.kind, flower.readiness.port) == ("http", site.flower.port)
    quick = plan.service("demo-worker-quick")
    assert quick.readiness.node == "quick@%h" and quick.readiness.queues == ("demo-quick",)
    assert "--hostname=quick@%h" in quick.argv


def test_workers_skip_mingle_and_gossip_unless_the_pool_asks_for_mingle() -> None:
    site = validate_file(EXAMPLES / "demo/site.yaml").site
    quick = build_plan(site, "/srv/rendered").service("demo-worker-quick")
    assert "--without-gossip" in quick.argv and "--without-mingle" in quick.argv
    workers = [worker.model_copy(update={"mingle": True}) for worker in site.workers]
    mingling = build_plan(site.model_copy(update={"workers": workers}), "/srv/rendered")
    argv = mingling.service("demo-worker-quick").argv
    assert "--without-gossip" in argv and "--without-mingle" not in argv


def test_a_pool_without_task_events_keeps_them_off_and_flower_from_enabling_them() -> None:
    from crate_deploy.plan.settings import flower_options, pool_settings

    site = validate_file(EXAMPLES / "demo" / "site.yaml").site
    assert "worker_send_task_events" not in pool_settings(site)["quick"]
    assert "enable_events" not in flower_options(site, "/state")  # Flower's default: on
    quick, *others = site.workers
    quiet = site.model_copy(update={"workers": [
        quick.model_copy(update={"task_events": False}), *others]})
    assert pool_settings(quiet)["quick"]["worker_send_task_events"] is False
    assert "worker_send_task_events" not in pool_settings(quiet)["slow"]
    assert flower_options(quiet, "/state")["enable_events"] is False
