"""Which host runs what: the `hosts:` section of a site, read one way everywhere.

A site without `hosts:` runs everything on the one machine it is rendered for, and its
nodes are POOL@%h (Celery puts in the machine's name).  With `hosts:`, each host runs
its own share: the pools it names (node POOL@HOST, the name written out, so `status`
on any machine knows which node belongs to which host), and beat and Flower where the
site puts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from crate_deploy.plan.names import node_name

if TYPE_CHECKING:  # only annotations: the models load lazily
    from crate_deploy.site.model import Host, Site, Worker


@dataclass(frozen=True)
class Node:
    """One `celery worker` of the fleet, as the broker sees it."""

    pool: str
    name: str  # POOL@HOST (POOL@%h without hosts)
    host: str | None  # None: the machine the site runs on (no hosts: section)
    queues: tuple[str, ...]


def host_names(site: Site) -> list[str]:
    return [host.name for host in site.hosts or []]


def find_host(site: Site, name: str) -> Host | None:
    return next((host for host in site.hosts or [] if host.name == name), None)


def pools_on(site: Site, host: str | None) -> list[Worker]:
    """The pools a share runs, in the site's order: every pool when host is None."""
    if host is None:
        return list(site.workers)
    placed = find_host(site, host)
    names = set(placed.pools) if placed else set()
    return [worker for worker in site.workers if worker.name in names]


def runs_beat(site: Site, host: str | None) -> bool:
    placed = find_host(site, host) if host is not None else None
    return site.beat.enabled and (host is None or bool(placed and placed.beat))


def runs_flower(site: Site, host: str | None) -> bool:
    placed = find_host(site, host) if host is not None else None
    return site.flower.enabled and (host is None or bool(placed and placed.flower))


def beat_host(site: Site) -> str | None:
    return next((host.name for host in site.hosts or [] if host.beat), None)


def flower_host(site: Site) -> str | None:
    return next((host.name for host in site.hosts or [] if host.flower), None)


def hosts_of(site: Site, pool: str) -> tuple[str, ...]:
    """Every host a pool runs on (empty without hosts: section)."""
    return tuple(host.name for host in site.hosts or [] if pool in host.pools)


def fleet_nodes(site: Site, here: str, share: str | None = None) -> list[Node]:
    """The worker nodes to expect: one share's (share=HOST), or the whole site's.

    Without hosts: every pool runs here, its node named after this machine (`here`).
    """
    if not site.hosts:
        return [Node(worker.name, node_name(worker).replace("%h", here), None,
                     tuple(worker.queues)) for worker in site.workers]
    hosts = [name for name in host_names(site) if share is None or name == share]
    return [Node(worker.name, node_name(worker, host), host, tuple(worker.queues))
            for host in hosts for worker in pools_on(site, host)]
