"""`status` of a site with hosts: which host each node, beat and Flower belong to.

Every worker of every host is asked over the broker (probe.pool_health), so `status` on
any one host sees the whole site; beat answers no ping, so only its own host sees its
process, and Flower is checked where it can be reached from here.
"""

from __future__ import annotations

from typing import Any

from crate_deploy.inspect import probe
from crate_deploy.plan.placement import beat_host, flower_host, host_names, pools_on, runs_flower
from crate_deploy.site.checks import is_loopback
from crate_deploy.site.model import Site


def flower_status(site: Site, share: str | None,
                  credentials: tuple[str, str] | None) -> probe.FlowerHealth | None:
    """Flower's health, checked here when it runs here, at its host's name when it listens
    beyond loopback there; None when it is not enabled or cannot be reached from here."""
    if not site.flower.enabled:
        return None
    where = flower_host(site)
    if where is None or runs_flower(site, share):
        return probe.flower_health(site, credentials)
    if is_loopback(site.flower.address):
        return None  # listens on its own host's loopback only
    remote = site.flower.model_copy(update={"address": where})
    return probe.flower_health(site.model_copy(update={"flower": remote}), credentials)


def host_summary(site: Site, pools: list[probe.PoolHealth], share: str | None,
                 flower: probe.FlowerHealth | None, beat_up: bool) -> list[dict[str, Any]]:
    """One entry per host: its nodes, the pools down there, and whether beat and Flower
    run there (and were checked from here: beat only on its own host, `share`)."""
    summary = []
    for name in host_names(site):
        nodes = [pool for pool in pools if pool.host == name]
        entry: dict[str, Any] = {
            "name": name, "nodes": [pool.node for pool in nodes],
            "down": [pool.name for pool in nodes if not pool.up],
            "expected_pools": [worker.name for worker in pools_on(site, name)]}
        if site.beat.enabled and beat_host(site) == name:
            entry["beat"] = (("up" if beat_up else "DOWN") if name == share
                             else "not checked from here")
        if site.flower.enabled and flower_host(site) == name:
            entry["flower"] = ("not checked from here" if flower is None
                               else "up" if flower.up else "DOWN")
        entry["up"] = not entry["down"] and "DOWN" not in (entry.get("flower"),
                                                             entry.get("beat"))
        summary.append(entry)
    return summary


def host_lines(hosts: list[dict[str, Any]]) -> list[str]:
    """Status lines naming each host, and what is down on it."""
    lines = []
    for host in hosts:
        parts = [f"pool {pool} DOWN" for pool in host["down"]]
        parts += [f"{pool} up" for pool in host["expected_pools"] if pool not in host["down"]]
        if "beat" in host:
            parts.append(f"beat {host['beat']}")
        if "flower" in host:
            parts.append(f"Flower {host['flower']}")
        lines.append(f"host     {host['name']:<24} {'up' if host['up'] else 'DOWN':<5} "
                     f"{', '.join(parts)}")
    return lines
