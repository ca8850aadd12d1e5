"""The site file's schema: pydantic models, strict, refusing unknown keys.

Field-level rules live here (types, ranges, name patterns, secret references);
rules that relate several fields live in checks.py, so each error can name the key
it is about. Every string that reaches a unit file or Python source is constrained
by a pattern here first; the renderer escapes on top of that.
"""

# No `from __future__ import annotations`: pydantic would compile and evaluate every
# field's annotation from its string (~2 ms of every command); these are plain objects.

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from crate_deploy.site.fields import (
    APP_PATTERN,
    CELERY_VERSION_PATTERN,
    FLOWER_VERSION_PATTERN,
    RABBITMQ_SCHEMES,
    USER_PATTERN,
    BrokerUrl,
    CronDayOfMonth,
    CronDayOfWeek,
    CronHour,
    CronMinute,
    CronMonth,
    EnvName,
    ExtraArg,
    Hostname,
    JsonScalar,
    LogLevel,
    Name,
    PathText,
    PoolType,
    QueueName,
    RoutePattern,
    Seconds,
    SecretReference,
    TaskName,
    Text,
    Url,
)
from crate_deploy.site.kubernetes import Kubernetes
from crate_deploy.site.strict import Strict


class Broker(Strict):
    """The message broker; several URLs of one transport give failover."""

    urls: list[BrokerUrl] = Field(min_length=1, max_length=16)
    """Broker URLs; more than one gives failover, in failover_strategy order. All must use one
    transport. A password must be a ${REFERENCE} to the secrets_file.
    """
    failover_strategy: Literal["round-robin", "shuffle"] = "round-robin"
    """How Celery picks the next URL when one fails."""
    heartbeat: Annotated[int, Field(ge=0, le=3600)] = 60
    """AMQP heartbeat in seconds (0 turns it off)."""
    confirm_publish: bool = True
    """Publisher confirms (AMQP): a send returns only once the broker has the message."""
    connection_timeout: Seconds = 10.0
    """Seconds to wait for a broker connection."""
    connection_retries: Annotated[int, Field(ge=0, le=1000)] | None = None
    """How often to retry a lost connection before giving up (unset: forever)."""
    tolerate_down: Annotated[int, Field(ge=0, le=15)] = 0
    """How many of the broker URLs (nodes of one RabbitMQ cluster) may be unreachable while
    `crate-deploy status` still exits 0: it names them in a warning instead. 0: any node
    down makes status fail. Must be less than the number of URLs.
    """

    @property
    def scheme(self) -> str:
        """The transport every URL uses (checks.py refuses a mix)."""
        return self.urls[0].partition("://")[0]

    @property
    def is_rabbitmq(self) -> bool:
        return self.scheme in RABBITMQ_SCHEMES


class Results(Strict):
    """Where task results go; `backend: null` means results are not stored."""

    backend: Url | None = "rpc://"
    """Result backend URL (rpc://, redis://, db+postgresql://...); null stores no results."""
    expires: Annotated[int, Field(ge=60, le=365 * 24 * 3600)] = 24 * 3600
    """Seconds a stored result is kept."""


class Queue(Strict):
    name: QueueName
    """Queue name (letters, digits, '_', '.', '-')."""
    durable: bool = True
    """Survives a broker restart."""
    type: Literal["classic", "quorum"] = "classic"
    """classic, or quorum (replicated; needs publisher confirms; no autoscale)."""
    delivery_limit: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Quorum queues: how often a message may come back (be redelivered) before it is
    dead-lettered, which stops poison-message loops: RabbitMQ delivers it at most N+1 times."""
    dead_letter: bool = False
    """Keep dead-lettered messages in QUEUE.dead (see `crate-deploy requeue`)."""


class Autoscale(Strict):
    min: Annotated[int, Field(ge=0, le=1024)]
    """Fewest pool processes."""
    max: Annotated[int, Field(ge=1, le=1024)]
    """Most pool processes."""


class Worker(Strict):
    """One pool: a `celery worker` process (one systemd unit) consuming some queues."""

    name: Name
    """Pool name: the unit is PROJECT-worker-NAME.service, the node NAME@host."""
    queues: list[QueueName] = Field(min_length=1, max_length=100)
    """Queues this pool consumes; each must be declared under queues."""
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 2
    """Pool processes (or threads / greenlets)."""
    pool: PoolType = "prefork"
    """Execution pool: prefork, threads, solo, gevent or eventlet."""
    autoscale: Autoscale | None = None
    """Grow and shrink the pool between min and max processes (prefork only), instead of
    concurrency.
    """
    prefetch_multiplier: Annotated[int, Field(ge=1, le=1000)] = 1
    """Messages reserved per process; 1 suits long tasks with late acks."""
    max_tasks_per_child: Annotated[int, Field(ge=1, le=10**9)] | None = None
    """Replace a pool process after this many tasks (prefork only)."""
    max_memory_per_child: Annotated[int, Field(ge=1024, le=10**12)] | None = None
    """Replace a pool process once its resident memory exceeds this many KiB (prefork only)."""
    soft_time_limit: Seconds | None = None
    """Seconds before SoftTimeLimitExceeded is raised in a task (prefork only); must be below
    time_limit.
    """
    time_limit: Seconds | None = None
    """Seconds before a task's process is killed; the unit's stop timeout is this plus 30 s."""
    acks_late: bool = True
    """Acknowledge a task after it ran, so a crash redelivers it instead of losing it."""
    reject_on_worker_lost: bool = True
    """Requeue a task whose process died (needs acks_late)."""
    log_level: LogLevel = "info"
    """Worker log level; `info` logs two lines per task (received, succeeded), `warning`
    none."""
    task_events: bool | None = None
    """Send task events (received, started, succeeded...) from this pool: what Flower shows
    tasks from. Default: when Flower is enabled. false: Flower no longer follows this
    pool's tasks (those a producer sent with task-sent events stay listed as sent), and
    its main process saves the time they take (up to half the rate of no-op tasks:
    docs/benchmarks.md); Flower is then rendered with enable_events off, so that it does
    not switch them back on. Delivery does not depend on them."""
    soft_shutdown_timeout: Seconds | None = None
    """Celery 5.5+: on stop, let running tasks go on this many seconds before the cold
    shutdown requeues them (worker_soft_shutdown_timeout)."""
    soft_shutdown_on_idle: bool | None = None
    """Celery 5.5+: use the soft shutdown even when the worker is idle."""
    detect_quorum_queues: bool | None = None
    """Celery 5.5+: turn off global QoS when a consumed queue is a quorum queue."""
    disable_prefetch: bool | None = None
    """Celery 5.6+: fetch a message only when a process is free (--disable-prefetch)."""
    stop_timeout: Seconds | None = None
    """Seconds systemd lets this pool finish running tasks on stop (default: time_limit + 30, else
    systemd.stop_timeout, else 600).
    """
    mingle: bool = False
    """At start, ask the other workers for the tasks revoked so far (Celery's mingle step; it
    waits a whole second for replies on every start). Off: a task revoked before this pool
    started is still revoked by the pools that were running."""
    extra_args: list[ExtraArg] = Field(default_factory=list, max_length=50)
    """More `celery worker` options, one per item (not those crate-deploy sets itself)."""


class Cron(Strict):
    """Like Celery's crontab(): each field takes cron syntax ("0", "*/15", "1-5")."""

    minute: CronMinute = "*"
    """Cron minute field (0-59)."""
    hour: CronHour = "*"
    """Cron hour field (0-23)."""
    day_of_week: CronDayOfWeek = "*"
    """Cron day-of-week field (0-6 with 0 = sunday, or sun-sat: "mon-fri")."""
    day_of_month: CronDayOfMonth = "*"
    """Cron day-of-month field (1-31)."""
    month_of_year: CronMonth = "*"
    """Cron month field (1-12)."""




class ScheduleEntry(Strict):
    """A periodic task: give exactly one of `cron` or `every` (seconds)."""

    name: Name
    """Entry name."""
    task: TaskName
    """Dotted name of the task to send."""
    cron: Cron | None = None
    """When to send it, crontab style."""
    every: Seconds | None = None
    """Or: send it every N seconds."""
    args: list[JsonScalar] = Field(default_factory=list, max_length=100)
    """Positional arguments (JSON scalars)."""
    kwargs: dict[EnvName, JsonScalar] = Field(default_factory=dict, max_length=100)
    """Keyword arguments (JSON scalars)."""
    queue: QueueName | None = None
    """Queue to send it to (default: the task's route)."""


class Beat(Strict):
    enabled: bool = False
    """Run one celery beat for the site."""
    schedule: list[ScheduleEntry] = Field(default_factory=list, max_length=1000)
    """Periodic tasks."""


class FlowerUser(Strict):
    user: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    """Login name."""
    password: SecretReference
    """A ${REFERENCE} to the password in the secrets_file."""


class Flower(Strict):
    enabled: bool = False
    """Run Flower, the monitoring web UI."""
    address: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.:-]{1,253}$")] = "127.0.0.1"
    """Address Flower listens on; anything but loopback needs auth."""
    port: Annotated[int, Field(ge=1, le=65535)] = 5555
    """TCP port."""
    auth: list[FlowerUser] = Field(default_factory=list, max_length=100)
    """HTTP basic-auth users."""
    insecure_no_auth: bool = False
    """Allow Flower without auth on a non-loopback address (anyone who reaches it can control the
    fleet).
    """
    url_prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    """Serve under /PREFIX (behind a reverse proxy)."""
    persistent: bool = True
    """Keep Flower's task history across restarts, in the state directory."""
    max_tasks: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    """Tasks kept in Flower's memory."""
    purge_offline_workers: Annotated[int, Field(ge=1, le=10**9)] | None = None
    """Forget workers offline for this many seconds."""
    read_only: bool | None = None
    """Flower 2.1+: the UI can look but not revoke, terminate or change pools."""


class Paths(Strict):
    """Where things live on the server. config_dir defaults to the render output directory."""

    config_dir: PathText | None = None
    """Where the rendered config files live on the server (default: the render output directory)."""
    state_dir: PathText | None = None
    """Beat's schedule and Flower's database (default: /var/lib/PROJECT, via StateDirectory=)."""


class Systemd(Strict):
    scope: Literal["system", "user"] = "system"
    """system units (/etc/systemd/system) or user units (~/.config/systemd/user)."""
    restart: Literal["on-failure", "always"] = "on-failure"
    """Restart= of every service."""
    restart_sec: Seconds = 5.0
    """Seconds before a restart."""
    stop_timeout: Seconds | None = None
    """TimeoutStopSec= for pools without time_limit (default 600)."""
    hardening: bool = True
    """Sandbox every service (ProtectSystem=strict, no capabilities, syscall filter ...)."""
    start_limit_burst: Annotated[int, Field(ge=1, le=100)] = 5
    """Starts within start_limit_interval before systemd gives up on a crash loop."""
    start_limit_interval: Seconds = 300.0
    """Seconds over which start_limit_burst counts."""


class Host(Strict):
    """One machine of a multi-host site, and its share of the fleet."""

    name: Hostname
    """The machine's host name (what `hostname` prints there): its pools' nodes are POOL@NAME,
    and `render --host NAME` renders its share."""
    pools: list[Name] = Field(default_factory=list, max_length=2000)
    """Worker pools (names under workers) this host runs; a pool may run on several hosts."""
    beat: bool = False
    """Run the site's one beat here (exactly one host, when beat is enabled)."""
    flower: bool = False
    """Run Flower here (exactly one host, when Flower is enabled)."""


class AppSettings(Strict):
    """How the application's own code names its Celery settings (for crate_deploy_producer)."""

    style: Literal["lowercase", "celery-namespace", "old-uppercase"] = "lowercase"
    """Names in the rendered producer module, crate_deploy_producer: lowercase (a plain app's
    config_from_object), celery-namespace (Django with namespace="CELERY": CELERY_BROKER_URL),
    or old-uppercase (Django with no namespace, like CRATE: BROKER_URL, CELERY_ROUTES).
    """


class Site(Strict):
    """A whole Celery deployment: everything one server runs for one application."""

    project: Name
    """Project name: the prefix of every unit (PROJECT.target, PROJECT-worker-POOL.service)."""
    app: Annotated[str, StringConstraints(pattern=APP_PATTERN, max_length=200)]
    """The Celery app to load (what you would give `celery -A`): module or module:attribute."""
    venv: PathText | None = None
    """The application's virtualenv; the units run VENV/bin/celery."""
    celery: PathText | None = None
    """Or: the path of the application's celery program."""
    celery_version: Annotated[str, StringConstraints(pattern=CELERY_VERSION_PATTERN)] | None = None
    """The target's Celery version, when its venv is not on this machine (default: probed, else the
    newest known).
    """
    flower_version: Annotated[str, StringConstraints(pattern=FLOWER_VERSION_PATTERN)] | None = None
    """The target's Flower version, like celery_version."""
    working_directory: PathText | None = None
    """Working directory of every service."""
    user: Annotated[str, StringConstraints(pattern=USER_PATTERN)] | None = None
    """Service user (default: a DynamicUser= made by systemd)."""
    group: Annotated[str, StringConstraints(pattern=USER_PATTERN)] | None = None
    """Service group (default: the user's)."""
    environment: dict[EnvName, Text] = Field(default_factory=dict, max_length=200)
    """Plain environment variables for every service (no secrets: they go in secrets_file)."""
    secrets_file: PathText | None = None
    """KEY=value file (mode 0600) holding every ${REFERENCE}; read by the units and by
    launch/status.
    """
    paths: Paths = Field(default_factory=Paths)
    """Where config and state live on the server."""
    app_settings: AppSettings = Field(default_factory=AppSettings)
    """How the application names its settings, so the processes that send tasks (web server,
    management commands) can be given the site's routing: see docs/producers.md.
    """
    broker: Broker
    """The message broker."""
    delivery: Literal["reliable", "fast"] = "reliable"
    """reliable: results, like tasks, wait for the broker's confirm; pools send task
    events for Flower and log two INFO lines per task. fast (docs/reliability.md): what stays
    the same is what keeps a task from being lost (late acks, durable queues, persistent
    and confirmed task publishes, from producers, beat and tasks); what goes is rpc://
    results' confirm waits (a result lost with a dropped connection: the caller's get()
    times out), task events by default (no task history in Flower) and the per-task INFO
    lines of pools without a log_level of their own. Keys set explicitly still win."""
    results: Results = Field(default_factory=Results)
    """The result backend."""
    queues: list[Queue] = Field(default_factory=lambda: [Queue(name="celery")], min_length=1)
    """Every queue the site uses (default: one classic queue, celery)."""
    default_queue: QueueName | None = None
    """Queue for tasks without a route (default: the first queue)."""
    default_queue_type: Literal["classic", "quorum"] | None = None
    """Celery 5.5+: type of queues Celery declares itself (task_default_queue_type)."""
    routes: dict[RoutePattern, QueueName] = Field(
        default_factory=dict, max_length=1000)
    """Task name (or glob like app.tasks.email_*) -> queue."""
    workers: list[Worker] = Field(min_length=1, max_length=2000)
    """Worker pools: one `celery worker` service each."""
    beat: Beat = Field(default_factory=Beat)
    """The periodic-task scheduler."""
    flower: Flower = Field(default_factory=Flower)
    """The Flower web UI."""
    systemd: Systemd = Field(default_factory=Systemd)
    """How the units behave."""
    hosts: list[Host] | None = Field(default=None, min_length=1, max_length=1000)
    """Several machines (docs/multi-host.md): which pools, beat and Flower each runs (default:
    everything on the one machine the site is rendered for)."""
    kubernetes: Kubernetes | None = None
    """What `render --target kubernetes` needs: image, namespace, replicas, resources, KEDA."""
    # Checked by site/compat_keys.py before anything else, wherever it stands in the file.
    requires: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z<>=!~.,* ]+$",
                                               max_length=200)] | None = Field(
        default=None, exclude=True)
    """The crate-deploy versions this site needs, as a quoted PEP 440 specifier (">=0.3"):
    an older crate-deploy says so instead of refusing the keys it does not know.
    """

    @property
    def celery_executable(self) -> str:
        """The `celery` program the units run: given directly, or bin/celery in the venv."""
        if self.celery:
            return self.celery
        return f"{(self.venv or '/usr').rstrip('/')}/bin/celery"

    @property
    def queue_names(self) -> list[str]:
        return [queue.name for queue in self.queues]

    @property
    def consumed_queues(self) -> set[str]:
        """The queues some pool of the site consumes."""
        return {queue for worker in self.workers for queue in worker.queues}

    @property
    def main_queue(self) -> str:
        return self.default_queue or self.queues[0].name
