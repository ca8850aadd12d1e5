"""Cross-checks of a multi-host site (`hosts:`), over the whole site, each at its key.

One beat for the site, at most one Flower, every pool on some host, every queue a task
can be sent to consumed on some host, node names (POOL@HOST) unique, one port per use
on each host.  A site without hosts: is not checked here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Literal
from urllib.parse import urlsplit

from crate_deploy.site.fields import SECRET_REFERENCE
from crate_deploy.site.load import Loc, format_loc
from crate_deploy.site.model import Host, Site

Finding = tuple[Loc, str, str]  # (where, message, "error" | "warning"), as in checks.py

# The port a URL without one uses: a Flower on that port of the broker's host would clash.
DEFAULT_PORTS = {"amqp": 5672, "pyamqp": 5672, "amqps": 5671, "redis": 6379, "rediss": 6379,
                 "db+postgresql": 5432, "db+mysql": 3306}


def host_findings(site: Site) -> Iterator[Finding]:
    if site.hosts is None:
        return
    yield from _host_names(site.hosts)
    yield from _host_pools(site, site.hosts)
    yield from _unplaced_pools(site, site.hosts)
    yield from _one_host_runs(site, site.hosts, "beat")
    yield from _one_host_runs(site, site.hosts, "flower")
    yield from _routed_queues(site, site.hosts)
    yield from _ports(site, site.hosts)


def _host_names(hosts: list[Host]) -> Iterator[Finding]:
    seen: dict[str, int] = {}
    for index, host in enumerate(hosts):
        first = seen.setdefault(host.name.lower(), index)  # host names ignore case
        if first != index:
            yield (("hosts", index, "name"), f"host {host.name!r} is already hosts[{first}]: "
                   f"its nodes (POOL@{host.name}) would take the same names; list each host "
                   "once", "error")


def _host_pools(site: Site, hosts: list[Host]) -> Iterator[Finding]:
    pools = [worker.name for worker in site.workers]
    for h_index, host in enumerate(hosts):
        here: Loc = ("hosts", h_index)
        if not host.pools and not host.beat and not host.flower:
            yield (here, f"host {host.name!r} runs nothing: name its pools, or set beat: true "
                   "or flower: true", "error")
        for p_index, pool in enumerate(host.pools):
            if pool not in pools:
                close = difflib.get_close_matches(pool, pools, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else f"pools: {', '.join(pools)}"
                yield ((*here, "pools", p_index), f"{pool!r} is not a pool under workers; "
                       f"{hint}", "error")
            elif host.pools.index(pool) != p_index:
                yield ((*here, "pools", p_index), f"pool {pool!r} is listed twice: two nodes "
                       f"named {pool}@{host.name} would take each other's replies; list it "
                       "once (raise its concurrency for more processes)", "error")


def _unplaced_pools(site: Site, hosts: list[Host]) -> Iterator[Finding]:
    placed = {pool for host in hosts for pool in host.pools}
    for index, worker in enumerate(site.workers):
        if worker.name not in placed:
            yield (("workers", index, "name"), f"pool {worker.name!r} runs on no host: add it "
                   "to the pools of a host under hosts", "error")


def _one_host_runs(site: Site, hosts: list[Host],
                   service: Literal["beat", "flower"]) -> Iterator[Finding]:
    """Exactly one host runs beat (two would send every periodic task twice) and Flower
    (each Flower sees the whole fleet over the broker; a second keeps a second history)."""
    enabled = site.beat.enabled if service == "beat" else site.flower.enabled
    title = "beat" if service == "beat" else "Flower"
    chosen = [index for index, host in enumerate(hosts) if getattr(host, service)]
    if not enabled:
        for index in chosen:
            yield (("hosts", index, service), f"{title} is not enabled: set {service}.enabled: "
                   "true, or remove this", "error")
        return
    if not chosen:
        yield (("hosts",), f"{service}.enabled is true but no host runs {title}: set "
               f"{service}: true on exactly one host", "error")
    why = ("a second beat would send every periodic task twice" if service == "beat" else
           "one Flower sees every host's workers over the broker")
    for index in chosen[1:]:
        yield (("hosts", index, service), f"{title} already runs on hosts[{chosen[0]}] "
               f"({hosts[chosen[0]].name}): {why}; set {service}: true on one host only",
               "error")


def _routed_queues(site: Site, hosts: list[Host]) -> Iterator[Finding]:
    """Every queue a task can be sent to (routes, the default queue, beat entries) has a
    consumer on some host, or its tasks wait forever."""
    placed = {pool for host in hosts for pool in host.pools}
    consumed = {queue for worker in site.workers if worker.name in placed
                for queue in worker.queues}
    declared = set(site.queue_names)
    default_at: Loc = (("default_queue",) if site.default_queue is not None
                       else ("queues", 0, "name"))
    targets: list[tuple[Loc, str, str]] = [
        *((("routes", pattern), queue, "routes to") for pattern, queue in site.routes.items()),
        (default_at, site.main_queue, "the default queue is"),
        *((("beat", "schedule", index, "queue"), entry.queue, "sends to")
          for index, entry in enumerate(site.beat.schedule) if entry.queue is not None),
    ]
    for loc, queue, verb in targets:
        if queue in declared and queue not in consumed:
            yield (loc, f"{verb} queue {queue!r}, which no pool on any host consumes: "
                   f"{_unconsumed_hint(site, queue)}", "error")


def _unconsumed_hint(site: Site, queue: str) -> str:
    pools = [worker.name for worker in site.workers if queue in worker.queues]
    if not pools:
        return "add it to the queues of a pool that runs on a host"
    return f"add {' or '.join(pools)} to the pools of a host"


def _ports(site: Site, hosts: list[Host]) -> Iterator[Finding]:
    """Flower is the one service that listens; on its host its port must be free of the
    broker and result backend when they run there too."""
    if not site.flower.enabled:
        return
    flower_hosts = {host.name.lower() for host in hosts if host.flower}
    urls: list[tuple[Loc, str]] = [(("broker", "urls", index), url)
                                   for index, url in enumerate(site.broker.urls)]
    if site.results.backend:
        urls.append((("results", "backend"), site.results.backend))
    for where, url in urls:
        parts = urlsplit(SECRET_REFERENCE.sub("x", url))
        scheme = url.partition("://")[0]
        port = parts.port or DEFAULT_PORTS.get(scheme)
        host = (parts.hostname or "").lower()
        if port == site.flower.port and host in flower_hosts:
            yield (("flower", "port"), f"port {port} on host {host} is already used by "
                   f"{format_loc(where)}; give Flower another port", "error")
