"""The process plan: every service a site runs, format-neutral, built once from a Site.

Each renderer (systemd units, Kubernetes manifests, ...) and the foreground launch read
the same plan, so what a foreground launch runs is what a unit says, and a new output
format never rebuilds a Celery command line of its own.  Nothing here is specific to
systemd: how a format spells a restart policy or a stop timeout is the renderer's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from crate_deploy.plan import names, placement
from crate_deploy.plan.settings import flower_basic_auth, flower_only_secrets
from crate_deploy.site.checks import stop_timeout
from crate_deploy.site.model import Site, Worker

Role = Literal["worker", "beat", "flower"]
# How long beat and Flower get to stop: neither runs tasks, so a short grace suffices.
BEAT_STOP_TIMEOUT = 60.0
FLOWER_STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Readiness:
    """How to tell the service is up: a pool answers a ping on its queues, Flower answers
    HTTP with its auth enforced, beat merely runs (it answers no ping)."""

    kind: Literal["ping", "http", "running"]
    node: str | None = None  # ping: the Celery node name, %h standing for the host name
    queues: tuple[str, ...] = ()
    address: str | None = None  # http: where Flower listens
    port: int | None = None


@dataclass(frozen=True)
class Service:
    """One long-running process of the fleet, as any supervisor would need it."""

    name: str  # the unit or workload name, without a suffix: PROJECT-worker-POOL
    role: Role
    description: str
    argv: tuple[str, ...]  # literal words: no shell, no $VAR expansion
    environment: dict[str, str]  # the service's own variables (may hold ${REFERENCE}s)
    env_files: tuple[str, ...]  # read in order, later files winning: the plain env, secrets
    unset_environment: tuple[str, ...]  # secrets of the files only another service needs
    working_directory: str | None
    user: str | None  # None: the platform's default (a DynamicUser under systemd)
    group: str | None
    umask: int  # files it creates (beat's schedule, flower.db) are its own unless said
    stop_signal: str  # warm shutdown: SIGTERM to the main process only
    stop_timeout: float  # seconds running work gets before it is killed
    restart: str
    restart_sec: float
    start_limit_burst: int
    start_limit_interval: float
    state_dir: str
    readiness: Readiness
    pool: str | None = None  # the worker pool's name, for workers
    singleton: bool = False  # at most one may ever run (beat duplicates every task)
    hosts: tuple[str, ...] = field(default_factory=tuple)  # placement; empty: every host

    @property
    def unit(self) -> str:
        return f"{self.name}.service"


@dataclass(frozen=True)
class Plan:
    """The whole fleet: its services in start order (pools, then beat, then Flower)."""

    project: str
    config_dir: str
    state_dir: str
    env_file: str  # the plain environment file every service reads
    services: tuple[Service, ...]
    host: str | None = None  # whose share this is; None: the whole site, on one machine

    def service(self, name: str) -> Service:
        return next(service for service in self.services if service.name == name)


def build_plan(site: Site, config_dir: str, host: str | None = None) -> Plan:
    """The process plan for a validated site whose config files live in config_dir: the
    whole site, or (host=NAME, for a site with hosts:) that host's share of it."""
    builder = _Builder(site, config_dir, host)
    services = [builder.worker(worker) for worker in placement.pools_on(site, host)]
    if placement.runs_beat(site, host):
        services.append(builder.beat())
    if placement.runs_flower(site, host):
        services.append(builder.flower())
    return Plan(site.project, config_dir, builder.state_dir, builder.env_file, tuple(services),
                host)


def celery_command(site: Site, command: str, *args: str) -> tuple[str, ...]:
    """`celery -A ENTRY COMMAND ARGS`, with the site's celery program and entry module."""
    return (site.celery_executable, "-A", names.APP_MODULE, command, *args)


def worker_arguments(worker: Worker, host: str | None = None) -> list[str]:
    """The `celery worker` options a pool's settings imply (node name POOL@HOST, or with %h
    for the machine's name when the site has no hosts:)."""
    args = [f"--hostname={names.node_name(worker, host)}", f"--queues={','.join(worker.queues)}",
            f"--pool={worker.pool}", f"--loglevel={worker.log_level.upper()}", "-O", "fair"]
    if worker.disable_prefetch:
        args.append("--disable-prefetch")
    # Gossip tracks every other worker's heartbeats (CPU on each worker, used by nothing
    # the site runs); mingle waits a second at each start (see Worker.mingle).
    args.append("--without-gossip")
    if not worker.mingle:
        args.append("--without-mingle")
    if worker.autoscale:
        args.append(f"--autoscale={worker.autoscale.max},{worker.autoscale.min}")
    else:
        args.append(f"--concurrency={worker.concurrency}")
    return [*args, *worker.extra_args]


class _Builder:
    def __init__(self, site: Site, config_dir: str, host: str | None) -> None:
        self.site = site
        self.config_dir = config_dir
        self.host = host
        self.state_dir = names.state_dir(site, config_dir)
        self.env_file = f"{config_dir}/{names.env_file_name(site)}"

    def worker(self, worker: Worker) -> Service:
        return self._service(
            names.worker_unit(self.site, worker), "worker",
            f"{self.site.project} Celery worker pool {worker.name}",
            celery_command(self.site, "worker", *worker_arguments(worker, self.host)),
            {"CRATE_DEPLOY_POOL": worker.name}, stop_timeout(self.site, worker),
            Readiness("ping", node=names.node_name(worker, self.host),
                      queues=tuple(worker.queues)),
            pool=worker.name, hosts=placement.hosts_of(self.site, worker.name))

    def beat(self) -> Service:
        schedule = f"--schedule={self.state_dir}/{names.BEAT_SCHEDULE_FILE}"
        return self._service(
            names.beat_unit(self.site), "beat", f"{self.site.project} Celery beat",
            celery_command(self.site, "beat", schedule, "--loglevel=INFO"), {},
            BEAT_STOP_TIMEOUT, Readiness("running"), singleton=True,
            hosts=tuple(filter(None, [placement.beat_host(self.site)])))

    def flower(self) -> Service:
        flower = self.site.flower
        environment = {"FLOWER_BASIC_AUTH": flower_basic_auth(self.site)} if flower.auth else {}
        return self._service(
            names.flower_unit(self.site), "flower", f"{self.site.project} Flower",
            celery_command(self.site, "flower", f"--conf={self.config_dir}/{names.FLOWER_CONFIG}"),
            environment, FLOWER_STOP_TIMEOUT,
            Readiness("http", address=flower.address, port=flower.port),
            hosts=tuple(filter(None, [placement.flower_host(self.site)])))

    def _service(self, unit: str, role: Role, description: str, argv: tuple[str, ...],
                 environment: dict[str, str], timeout: float, readiness: Readiness,
                 pool: str | None = None, singleton: bool = False,
                 hosts: tuple[str, ...] = ()) -> Service:
        site, systemd = self.site, self.site.systemd
        env_files = (self.env_file, *([site.secrets_file] if site.secrets_file else []))
        user = site.user if systemd.scope == "system" else None
        # Flower's passwords reach Flower only; the units' sandbox sets UMask=0077.
        unset = () if role == "flower" else tuple(flower_only_secrets(site))
        hardened = systemd.hardening and systemd.scope == "system"
        return Service(
            name=unit.removesuffix(".service"), role=role, description=description, argv=argv,
            environment=environment, env_files=env_files, unset_environment=unset,
            umask=0o077 if hardened else 0o022,
            working_directory=site.working_directory, user=user,
            group=(site.group or site.user) if user else None,
            stop_signal="SIGTERM", stop_timeout=timeout, restart=systemd.restart,
            restart_sec=systemd.restart_sec, start_limit_burst=systemd.start_limit_burst,
            start_limit_interval=systemd.start_limit_interval, state_dir=self.state_dir,
            readiness=readiness, pool=pool, singleton=singleton, hosts=hosts)
