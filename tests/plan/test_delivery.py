"""`delivery: reliable | fast`: what fast changes in the plan (defaults only: keys the site
sets win), and that reliable, the default, changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from crate_deploy.plan.settings import (
    celery_settings,
    delivery_note,
    delivery_settings,
    flower_options,
    pool_settings,
)
from crate_deploy.site.model import Site


def _site(delivery: str | None = None, backend: str | None = "rpc://",
          broker: str = "amqp://127.0.0.1:5672//", confirm_publish: bool = True,
          **quick: Any) -> Site:
    data: dict[str, Any] = {
        "project": "demo", "app": "demo.app", "celery": "/usr/bin/celery",
        "broker": {"urls": [broker], **({"confirm_publish": False}
                                        if not confirm_publish else {})},
        "results": {"backend": backend},
        "queues": [{"name": "quick"}, {"name": "slow"}],
        "workers": [{"name": "quick", "queues": ["quick"], **quick},
                    {"name": "slow", "queues": ["slow"]}],
        "flower": {"enabled": True},
    }
    if delivery is not None:
        data["delivery"] = delivery
    return Site.model_validate(data)


def test_reliable_is_the_default_and_changes_nothing() -> None:
    default, reliable = _site(), _site("reliable")
    assert default.delivery == "reliable"
    for site in (default, reliable):
        assert delivery_settings(site) == {}
        assert celery_settings(site)["task_send_sent_event"] is True
        assert all("worker_send_task_events" not in pool
                   for pool in pool_settings(site).values())
        assert "enable_events" not in flower_options(site, "/var/lib/demo")


def test_fast_turns_task_events_off_in_every_pool_and_in_flower() -> None:
    site = _site("fast")
    assert {name: pool["worker_send_task_events"]
            for name, pool in pool_settings(site).items()} == {"quick": False, "slow": False}
    assert flower_options(site, "/var/lib/demo")["enable_events"] is False
    # Nothing follows a task-sent event then: Flower would list every task as sent.
    assert celery_settings(site)["task_send_sent_event"] is False
    assert delivery_settings(site) == {"unconfirmed_results": True,
                                       "quiet_task_logs": ["quick", "slow"]}


def test_keys_the_site_sets_win_over_fast() -> None:
    site = _site("fast", task_events=True, log_level="info")
    pools = pool_settings(site)
    assert pools["quick"]["worker_send_task_events"] is True
    assert pools["slow"]["worker_send_task_events"] is False
    assert celery_settings(site)["task_send_sent_event"] is True  # quick's tasks are followed
    assert delivery_settings(site)["quiet_task_logs"] == ["slow"]


@pytest.mark.parametrize("changes", [
    {"backend": "redis://127.0.0.1:6379/0"},
    {"backend": "db+postgresql://demo@127.0.0.1/demo"},
    {"backend": None},
    {"confirm_publish": False},  # nothing waits for a confirm to begin with
    {"broker": "redis://127.0.0.1:6379/1"},
], ids=["redis", "database", "no-results", "no-confirms", "redis-broker"])
def test_fast_results_change_applies_to_confirmed_rpc_results_only(
        changes: dict[str, Any]) -> None:
    """Other backends write results with their own client, which never waited for a
    publisher confirm: fast changes events and log lines there, not results."""
    site = _site("fast", **changes)
    assert delivery_settings(site)["unconfirmed_results"] is False
    assert delivery_settings(site)["quiet_task_logs"] == ["quick", "slow"]
    note = delivery_note(site)  # render says so (no results at all: nothing to say)
    assert (note is None) is (site.results.backend is None), note
    assert delivery_note(_site("fast")) is None and delivery_note(_site()) is None
