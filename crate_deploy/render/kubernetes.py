"""The Kubernetes renderer: a Deployment per planned service, from the same process plan
the systemd units come from, and a ConfigMap holding the very files a systemd host gets.

- each container runs the plan's argv as its command (no shell, no entrypoint script),
  so the kubelet's SIGTERM reaches Celery's main process only: a warm shutdown, given
  terminationGracePeriodSeconds = the plan's stop timeout (+ Celery 5.5's soft shutdown);
- workers are named POOL@$(HOSTNAME), HOSTNAME declared from the pod's name, so the node
  name and the startup probe's `inspect ping -d` agree even where the kernel's hostname
  is the pod name cut to 63 characters;
- every secret is a secretKeyRef to the one Secret the operator creates, each workload
  getting only the keys its settings reference;
- a checksum of the ConfigMap's data on every pod template rolls the pods on a change.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
from dataclasses import dataclass, field
from typing import Any

from crate_deploy.errors import RenderError
from crate_deploy.plan import names
from crate_deploy.plan.services import Plan, Service
from crate_deploy.render.base import RenderedFile, Renderer
from crate_deploy.render.config import plain_environment
from crate_deploy.render.escape import kubernetes_expansion
from crate_deploy.site.fields import SECRET_REFERENCE
from crate_deploy.site.kubernetes import Kubernetes, KubernetesPool, Resources
from crate_deploy.site.model import Site
from crate_deploy.target.versions import TargetVersions

MANIFEST_DIR = "kubernetes"
# What the ConfigMap holds: the modules every container imports or reads.
CONFIGMAP_FILES = (f"{names.APP_MODULE}.py", f"{names.CONFIG_MODULE}.py", names.FLOWER_CONFIG)
# The entry module touches this from a thread of the worker's (or beat's) main process
# while CRATE_DEPLOY_HEARTBEAT_FILE is set; the liveness probe only reads its age.
HEARTBEAT_FILE = "/tmp/crate-deploy-heartbeat"  # noqa: S108 - the pod's own emptyDir
HEARTBEAT_MAX_AGE = 60
PING_TIMEOUT = 10  # seconds `inspect ping` waits for the reply
DEFAULT_MAX_REPLICAS = 10


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str | None = None  # a literal, already escaped from the kubelet's $(NAME)
    secret_key: str | None = None  # or: from this key of the site's Secret
    field_path: str | None = None  # or: from the pod itself


@dataclass(frozen=True)
class Probe:
    period: int
    timeout: int
    failures: int
    command: tuple[str, ...] = ()  # exec
    http_path: str | None = None  # or httpGet on the container's port "http"


@dataclass(frozen=True)
class Workload:
    """One Deployment's worth: a planned service and what Kubernetes adds to it."""

    service: Service
    component: str
    container: str
    selector: dict[str, str]
    labels: dict[str, str]
    command: tuple[str, ...]
    env: tuple[EnvVar, ...]
    grace: int
    replicas: int | None
    resources: Resources | None
    secret_keys: tuple[str, ...]
    probes: dict[str, Probe] = field(default_factory=dict)
    port: int | None = None
    recreate: bool = False  # a singleton: the old pod is gone before the new one starts


class KubernetesRenderer(Renderer):
    """Manifests under kubernetes/; `config_files` are ConfigRenderer's, for the ConfigMap."""

    def __init__(self, site: Site, source: str, versions: TargetVersions,
                 config_files: list[RenderedFile]) -> None:
        super().__init__(site, source, versions)
        if site.kubernetes is None:
            raise RenderError("render --target kubernetes needs the site's kubernetes section")
        self.kube: Kubernetes = site.kubernetes
        by_path = {file.path: file.content for file in config_files}
        self.config_data = {path: by_path[path] for path in CONFIGMAP_FILES if path in by_path}
        self.secret = self.kube.secret or f"{site.project}-secrets"

    def files(self, plan: Plan) -> list[RenderedFile]:
        checksum = hashlib.sha256(json.dumps(self.config_data, sort_keys=True).encode())
        common = {"kube": self.kube, "plan": plan, "secret": self.secret,
                  "config_map": self._config_map_name(), "checksum": checksum.hexdigest(),
                  "heartbeat_max_age": HEARTBEAT_MAX_AGE}
        files = [self.file(f"{MANIFEST_DIR}/{self._config_map_name()}.yaml",
                           "kubernetes/configmap.yaml.j2", data=self.config_data,
                           labels=self._labels("config"), **common)]
        for service in plan.services:
            workload = self._workload(service, plan)
            files.append(self.file(f"{MANIFEST_DIR}/{service.name}.yaml",
                                   f"kubernetes/{service.role}.yaml.j2", w=workload,
                                   scaling=self._scaling(service), **common))
        if self.kube.keda.enabled:
            files.append(self.file(f"{MANIFEST_DIR}/{self._auth_name()}.yaml",
                                   "kubernetes/keda-auth.yaml.j2", name=self._auth_name(),
                                   labels=self._labels("autoscaling"), **common))
        return files

    # --- one workload -------------------------------------------------------------

    def _workload(self, service: Service, plan: Plan) -> Workload:
        selector = {"app.kubernetes.io/name": self.site.project,
                    "app.kubernetes.io/component": service.role}
        if service.pool is not None:
            selector["crate-deploy/pool"] = service.pool
        pool = self._pool(service)
        keys = self._secret_keys(service)
        return Workload(
            service=service, component=service.role, container=service.role,
            selector=selector, labels={**self._labels(service.role), **selector},
            command=self._command(service), env=self._env(service, plan, keys),
            grace=self._grace(service), replicas=self._replicas(service, pool),
            resources=(pool.resources if pool and pool.resources else self.kube.resources),
            secret_keys=keys, probes=self._probes(service),
            port=service.readiness.port if service.role == "flower" else None,
            recreate=service.singleton)

    def _pool(self, service: Service) -> KubernetesPool | None:
        return self.kube.pools.get(service.pool) if service.pool else None

    def _command(self, service: Service) -> tuple[str, ...]:
        """The plan's argv as literals for the kubelet, but for the node name (from the pod's
        name) and Flower's address (the pod's, for its Service; flowerconfig says loopback
        for a systemd host, and a later command-line option wins over the config file)."""
        argv = [kubernetes_expansion(arg) for arg in service.argv]
        if service.role == "worker":
            node = kubernetes_expansion(f"--hostname={service.readiness.node}")
            if node not in argv:
                raise RenderError(f"{service.name}: the plan's argv has no {node}")
            argv[argv.index(node)] = f"--hostname={service.pool}@$(HOSTNAME)"
        if service.role == "flower":
            argv.append("--address=0.0.0.0")
        return tuple(argv)

    def _env(self, service: Service, plan: Plan, keys: tuple[str, ...]) -> tuple[EnvVar, ...]:
        """HOSTNAME first (the command refers to it), the plain environment, the service's
        own variables, then the secrets: what the units read from their env files."""
        env = [EnvVar("HOSTNAME", field_path="metadata.name")] if service.role == "worker" else []
        plain = {**plain_environment(self.site.environment, plan.config_dir),
                 **service.environment}
        if service.role in ("worker", "beat"):
            plain["CRATE_DEPLOY_HEARTBEAT_FILE"] = HEARTBEAT_FILE
        env.extend(EnvVar(name, value=kubernetes_expansion(value))
                   for name, value in plain.items())
        env.extend(EnvVar(key, secret_key=key) for key in keys)
        return tuple(env)

    def _secret_keys(self, service: Service) -> tuple[str, ...]:
        """The Secret's keys this service's settings reference (Flower: also its users')."""
        texts = [*self.site.broker.urls, self.site.results.backend or ""]
        if service.role == "flower":
            texts.extend(user.password for user in self.site.flower.auth)
        found = (match for text in texts for match in SECRET_REFERENCE.findall(text))
        return tuple(dict.fromkeys(found))

    def _grace(self, service: Service) -> int:
        """Seconds from SIGTERM to SIGKILL: the stop timeout, plus Celery 5.5's soft shutdown
        (running tasks get that long again once a cold shutdown begins)."""
        worker = next((w for w in self.site.workers if w.name == service.pool), None)
        soft = worker.soft_shutdown_timeout if worker and worker.soft_shutdown_timeout else 0.0
        return math.ceil(service.stop_timeout + soft)

    def _replicas(self, service: Service, pool: KubernetesPool | None) -> int | None:
        if service.singleton or service.role == "flower":
            return 1
        if self.kube.keda.enabled:
            return None  # KEDA's HPA owns it; a value here would undo it on every apply
        return pool.replicas if pool and pool.replicas is not None else 1

    def _probes(self, service: Service) -> dict[str, Probe]:
        python = posixpath.join(posixpath.dirname(self.site.celery_executable), "python3")
        heartbeat = Probe(period=30, timeout=10, failures=3, command=(
            python, "-I", "-S", "-c", "import os, sys, time; sys.exit(time.time() - os.stat("
            f"os.environ['CRATE_DEPLOY_HEARTBEAT_FILE']).st_mtime > {HEARTBEAT_MAX_AGE})"))
        if service.role == "worker":
            ping = (f"exec {self.site.celery_executable} -A {names.APP_MODULE} inspect ping "
                    f"--destination \"{service.pool}@$HOSTNAME\" --timeout {PING_TIMEOUT}")
            return {"startupProbe": Probe(period=15, timeout=PING_TIMEOUT + 20, failures=20,
                                          command=("/bin/sh", "-c", ping)),
                    "livenessProbe": heartbeat}
        if service.role == "beat":
            return {"startupProbe": Probe(period=10, timeout=10, failures=30,
                                          command=heartbeat.command),
                    "livenessProbe": heartbeat}
        prefix = f"/{self.site.flower.url_prefix}" if self.site.flower.url_prefix else ""
        check = f"{prefix}/healthcheck"
        return {"readinessProbe": Probe(period=10, timeout=5, failures=3, http_path=check),
                "livenessProbe": Probe(period=30, timeout=10, failures=3, http_path=check)}

    # --- names and labels --------------------------------------------------------

    def _labels(self, component: str) -> dict[str, str]:
        return {**self.kube.labels, "app.kubernetes.io/name": self.site.project,
                "app.kubernetes.io/component": component,
                "app.kubernetes.io/managed-by": "crate-deploy"}

    def _config_map_name(self) -> str:
        return f"{self.site.project}-config"

    def _auth_name(self) -> str:
        return f"{self.site.project}-rabbitmq"

    def _scaling(self, service: Service) -> dict[str, Any] | None:
        """The KEDA ScaledObject's values for a pool: its queues' messages, ready and
        unacknowledged (running tasks count, so a busy pool is not scaled down under
        them), per replica the pool's concurrency."""
        if not self.kube.keda.enabled or service.pool is None:
            return None
        worker = next(w for w in self.site.workers if w.name == service.pool)
        pool = self.kube.pools.get(worker.name) or KubernetesPool()
        queues = worker.queues
        return {
            "min": pool.min_replicas if pool.min_replicas is not None else 1,
            "max": pool.max_replicas or DEFAULT_MAX_REPLICAS,
            "per_replica": worker.autoscale.max if worker.autoscale else worker.concurrency,
            "queue": queues[0] if len(queues) == 1 else (
                "^(" + "|".join(q.replace(".", "\\.") for q in queues) + ")$"),
            "regex": len(queues) > 1,
            "auth": self._auth_name(), "labels": self._labels("autoscaling"),
        }
