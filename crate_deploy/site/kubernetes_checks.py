"""Rules for the `kubernetes:` section that relate it to the rest of the site.

`section_findings` runs with every validation (a section that names a pool the site lacks
is wrong whatever the target); `target_findings` only when rendering for Kubernetes,
where a site without the section, or with names Kubernetes refuses, cannot be rendered.
Every key of the section changes the manifests or is refused here: a key that would be
silently ignored (replicas under KEDA, KEDA bounds without KEDA) is an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from crate_deploy.site.checks import Finding, is_loopback
from crate_deploy.site.fields import SECRET_REFERENCE
from crate_deploy.site.kubernetes import DNS_LABEL_PATTERN, Keda
from crate_deploy.site.load import Loc
from crate_deploy.site.model import Site

HERE: Loc = ("kubernetes",)
RESERVED_LABEL_PREFIXES = ("app.kubernetes.io/", "crate-deploy/")


def section_findings(site: Site) -> Iterator[Finding]:
    """Cross-checks of the kubernetes section against the site (any target)."""
    kube = site.kubernetes
    if kube is None:
        return
    pools = {worker.name for worker in site.workers}
    for name, pool in kube.pools.items():
        here: Loc = (*HERE, "pools", name)
        if name not in pools:
            yield (here, f"names no pool of the site (pools: {', '.join(sorted(pools))})",
                   "error")
        if kube.keda.enabled and pool.replicas is not None:
            yield ((*here, "replicas"), "KEDA sets the replicas of a scaled pool: remove "
                   "replicas, or give min_replicas and max_replicas", "error")
        for key in ("min_replicas", "max_replicas"):
            if not kube.keda.enabled and getattr(pool, key) is not None:
                yield ((*here, key), "only applies with kubernetes.keda.enabled: true; use "
                       "replicas for a fixed number of pods", "error")
        low, high = pool.min_replicas or 1, pool.max_replicas or 10
        if kube.keda.enabled and low > high:
            yield ((*here, "min_replicas"), f"must not exceed max_replicas ({high})", "error")
    for section in ("labels", "annotations"):
        for key in getattr(kube, section):
            if key.startswith(RESERVED_LABEL_PREFIXES):
                yield ((*HERE, section, key), f"{key} is set by crate-deploy itself (selectors, "
                       "config checksum); choose another key", "error")
    yield from _keda(site, kube.keda)


def _keda(site: Site, keda: Keda) -> Iterator[Finding]:
    here: Loc = (*HERE, "keda")
    if not keda.enabled:
        for key in sorted(keda.model_fields_set - {"enabled"}):
            yield ((*here, key), "only applies with keda.enabled: true; remove it", "error")
        return
    if not site.broker.is_rabbitmq:
        yield ((*here, "enabled"), f"KEDA's RabbitMQ scaler needs a RabbitMQ broker, not "
               f"{site.broker.scheme}://; turn KEDA off for this site", "error")


def target_findings(site: Site) -> Iterator[Finding]:
    """What `render --target kubernetes` additionally needs of a valid site."""
    if site.kubernetes is None:
        yield (HERE, "render --target kubernetes needs a kubernetes section with at least "
               "the image (kubernetes: {image: registry/app:tag})", "error")
    if site.hosts:
        yield (("hosts",), "Kubernetes places the pods itself: a site rendered with --target "
               "kubernetes has no hosts: section (replicas per pool go under kubernetes:)",
               "error")
    names: list[tuple[Loc, str]] = [(("project",), site.project)]
    names.extend((("workers", index, "name"), worker.name)
                 for index, worker in enumerate(site.workers))
    for loc, name in names:
        if re.fullmatch(DNS_LABEL_PATTERN, name) is None:
            yield (loc, f"{name!r}: Kubernetes names and labels take lowercase letters, "
                   "digits and '-' only ('_' is refused), ending with a letter or digit",
                   "error")
    yield from _environment(site)
    yield from _mount_paths(site)
    flower = site.flower
    # A non-loopback address without auth is refused for every target already.
    if (flower.enabled and not flower.auth and not flower.insecure_no_auth
            and is_loopback(flower.address)):
        yield (("flower", "auth"), "in Kubernetes Flower listens on the pod's address, for "
               "its Service: add flower.auth (or set insecure_no_auth: true)", "error")


def _environment(site: Site) -> Iterator[Finding]:
    """Names the containers set themselves: HOSTNAME (the pod's name, which the node name
    and the startup probe read) and the Secret's keys (one env entry each: a second entry
    of the same name breaks `kubectl apply`'s merge)."""
    secrets = {name for url in [*site.broker.urls, site.results.backend or ""]
               for name in SECRET_REFERENCE.findall(url)}
    secrets.update(name for user in site.flower.auth
                   for name in SECRET_REFERENCE.findall(user.password))
    for name in site.environment:
        if name == "HOSTNAME":
            yield (("environment", name), "in Kubernetes HOSTNAME is the pod's name (the "
                   "workers' node names use it): remove it here", "error")
        elif name in secrets:
            yield (("environment", name), f"{name} is also a key of the Secret (a ${{{name}}} "
                   "reference): give the variable another name", "error")


def _mount_paths(site: Site) -> Iterator[Finding]:
    """The config directory (a read-only ConfigMap), the state directory and /tmp (both
    emptyDirs) are mounted separately: none may be another, or inside the read-only one."""
    config, state = site.paths.config_dir, site.paths.state_dir
    if state is not None and (state == "/tmp" or (config is not None and (  # noqa: S108
            state == config or state.startswith(config + "/")))):
        yield (("paths", "state_dir"), "in Kubernetes the state directory is an emptyDir of "
               "its own: it cannot be /tmp, the config_dir or inside it", "error")
    if config == "/tmp":  # noqa: S108
        yield (("paths", "config_dir"), "in Kubernetes /tmp is an emptyDir of its own: put "
               "the config_dir elsewhere (/etc/crate-deploy/PROJECT)", "error")
