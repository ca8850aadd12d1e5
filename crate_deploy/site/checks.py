"""Rules that relate several parts of a site file, each reported at the key it is about.

Field-level rules live in model.py; pydantic has already enforced them when these run.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Iterator
from urllib.parse import urlsplit

from crate_deploy.site.fields import SECRET_REFERENCE
from crate_deploy.site.hosts import host_findings
from crate_deploy.site.load import Loc, format_loc
from crate_deploy.site.model import Site, Worker

Finding = tuple[Loc, str, str]  # (where, message, "error" | "warning")

# Arguments crate-deploy sets itself; a second copy in extra_args would fight it.
MANAGED_ARGS = {
    "-A": "app", "--app": "app", "-Q": "queues", "--queues": "queues", "-c": "concurrency",
    "--concurrency": "concurrency", "-P": "pool", "--pool": "pool", "-n": "the node name",
    "--hostname": "the node name", "-B": "beat (use the beat section: one beat per site)",
    "--beat": "beat (use the beat section: one beat per site)", "-D": "systemd (no detaching)",
    "--detach": "systemd (no detaching)", "--pidfile": "systemd", "--logfile": "the journal",
    "-f": "the journal", "-l": "log_level", "--loglevel": "log_level",
    "--autoscale": "autoscale", "--without-mingle": "mingle", "--without-gossip": "the plan",
}
PREFORK_ONLY = ("max_tasks_per_child", "max_memory_per_child", "soft_time_limit", "autoscale")
# Seconds systemd waits beyond a pool's hard time limit before it SIGKILLs a stopping worker.
STOP_MARGIN = 30.0


def check_site(site: Site, skip: Collection[str] = ()) -> list[Finding]:
    """Every cross-field problem in the site, errors and warnings; `skip` names rules
    (keys of RULES) whose input is incomplete because some of it did not validate."""
    findings: list[Finding] = []
    for name, rule in RULES.items():
        if name not in skip:
            findings.extend(rule(site))
    from crate_deploy.site.kubernetes_checks import section_findings

    findings.extend(section_findings(site))
    return findings


def stop_timeout(site: Site, worker: Worker) -> float:
    """How long systemd lets a worker finish its running tasks before it SIGKILLs them."""
    if worker.stop_timeout is not None:
        return worker.stop_timeout
    if site.systemd.stop_timeout is not None:
        return site.systemd.stop_timeout
    if worker.time_limit is not None:
        return worker.time_limit + STOP_MARGIN
    return 600.0  # CRATE's supervisord stopwaitsecs: long enough for its slowest tasks


def _unique_names(site: Site) -> Iterator[Finding]:
    sections: list[tuple[Loc, list[str]]] = [
        (("workers",), [worker.name for worker in site.workers]),
        (("queues",), site.queue_names),
        (("beat", "schedule"), [entry.name for entry in site.beat.schedule]),
        (("flower", "auth"), [user.user for user in site.flower.auth]),
    ]
    for base, names in sections:
        key = "user" if base == ("flower", "auth") else "name"
        for index, name in enumerate(names):
            first = names.index(name)
            if first != index:
                yield ((*base, index, key), f"{name!r} is already used by {_fmt(base)}[{first}]; "
                       f"{key}s must be unique", "error")


def _queue_references(site: Site) -> Iterator[Finding]:
    declared = set(site.queue_names)
    hint = f"declare it under queues (declared: {', '.join(dict.fromkeys(site.queue_names))})"
    for w_index, worker in enumerate(site.workers):
        for q_index, name in enumerate(worker.queues):
            if name not in declared:
                yield (("workers", w_index, "queues", q_index), f"queue {name!r} is not "
                       f"declared; {hint}", "error")
    for pattern, queue in site.routes.items():
        if queue not in declared:
            yield (("routes", pattern), f"routes to undeclared queue {queue!r}; {hint}", "error")
    for index, entry in enumerate(site.beat.schedule):
        if entry.queue is not None and entry.queue not in declared:
            yield (("beat", "schedule", index, "queue"), f"queue {entry.queue!r} is not "
                   f"declared; {hint}", "error")
    if site.default_queue is not None and site.default_queue not in declared:
        yield (("default_queue",), f"queue {site.default_queue!r} is not declared; {hint}",
               "error")


def _unused_queues(site: Site) -> Iterator[Finding]:
    consumed = site.consumed_queues
    for index, queue in enumerate(site.queues):
        if queue.name not in consumed:
            yield (("queues", index, "name"), f"no worker pool consumes queue {queue.name!r}: "
                   "tasks sent to it will wait forever", "warning")
    if site.main_queue not in consumed:
        yield (("default_queue",), f"the default queue {site.main_queue!r} has no consumer",
               "warning")


def _pool_options(site: Site) -> Iterator[Finding]:
    quorum = {q.name for q in site.queues if q.type == "quorum"}
    for index, worker in enumerate(site.workers):
        here: Loc = ("workers", index)
        if worker.pool != "prefork":
            for option in PREFORK_ONLY:
                if getattr(worker, option) is not None:
                    yield ((*here, option), f"the {worker.pool} pool ignores {option}; remove "
                           "it or use pool: prefork", "error")
        if worker.pool in ("threads", "solo") and worker.time_limit is not None:
            yield ((*here, "time_limit"), f"the {worker.pool} pool cannot enforce time limits; "
                   "remove time_limit or use pool: prefork", "error")
        if worker.pool == "solo" and worker.concurrency != 1:
            yield ((*here, "concurrency"), "the solo pool runs one task at a time: set "
                   "concurrency: 1 or use another pool", "error")
        if worker.autoscale is not None:
            yield from _autoscale(here, worker, quorum)
        if (worker.soft_time_limit is not None and worker.time_limit is not None
                and worker.soft_time_limit >= worker.time_limit):
            yield ((*here, "soft_time_limit"), f"must be less than time_limit "
                   f"({worker.time_limit:g}) so the task can clean up before it is killed",
                   "error")
        if worker.reject_on_worker_lost and not worker.acks_late:
            yield ((*here, "reject_on_worker_lost"), "only works with acks_late: true",
                   "error")


def _autoscale(here: Loc, worker: Worker, quorum: set[str]) -> Iterator[Finding]:
    assert worker.autoscale is not None
    if worker.autoscale.min > worker.autoscale.max:
        yield ((*here, "autoscale", "min"), f"must not exceed autoscale.max "
               f"({worker.autoscale.max})", "error")
    if set(worker.queues) & quorum:
        yield ((*here, "autoscale"), "autoscale needs global QoS, which quorum queues do not "
               "support: use a fixed concurrency", "error")


def _stop_timeouts(site: Site) -> Iterator[Finding]:
    for index, worker in enumerate(site.workers):
        if worker.time_limit is None:
            continue
        timeout = stop_timeout(site, worker)
        if timeout <= worker.time_limit:
            where: Loc = (("workers", index, "stop_timeout") if worker.stop_timeout is not None
                          else ("systemd", "stop_timeout"))
            yield (where, f"{timeout:g}s is not longer than workers[{index}].time_limit "
                   f"({worker.time_limit:g}s): systemd would kill tasks still running on stop",
                   "error")


def _extra_args(site: Site) -> Iterator[Finding]:
    for w_index, worker in enumerate(site.workers):
        for a_index, arg in enumerate(worker.extra_args):
            option = next((o for o in _options_in(arg) if o in MANAGED_ARGS), None)
            if option is not None:
                yield (("workers", w_index, "extra_args", a_index), f"{option} is set by "
                       f"crate-deploy from {MANAGED_ARGS[option]}; remove it here", "error")


# celery worker's short options that take no value: in a cluster such as "-EQother" each
# of them is followed by another option; any other letter takes the rest as its value.
_SHORT_FLAGS = frozenset("BCDEhq")


def _options_in(arg: str) -> list[str]:
    """The options one argument holds: "--queues=x" is --queues; "-Qx" is -Q; a cluster
    "-Ec9" is -E and -c (click reads it so)."""
    if arg.startswith("--"):
        return [arg.partition("=")[0]]
    options = []
    for letter in arg[1:]:
        options.append(f"-{letter}")
        if letter not in _SHORT_FLAGS:
            break  # the rest is this option's value
    return options


def _failover(site: Site) -> Iterator[Finding]:
    for index, url in enumerate(site.broker.urls):
        query = urlsplit(SECRET_REFERENCE.sub("x", url)).query
        if query and url.startswith(("amqp", "pyamqp")):
            yield (("broker", "urls", index), "options in the URL's query reach kombu as "
                   "text and fail there (?connect_timeout=3 is a string, not a number): "
                   "remove the query and use broker.connection_timeout and "
                   "broker.heartbeat", "error")
    schemes = [url.partition("://")[0] for url in site.broker.urls]
    for index, scheme in enumerate(schemes[1:], start=1):
        if scheme != schemes[0]:
            yield (("broker", "urls", index), f"uses {scheme}:// but urls[0] uses "
                   f"{schemes[0]}://; failover URLs must share one transport", "error")
    if site.broker.tolerate_down >= len(site.broker.urls):
        yield (("broker", "tolerate_down"), f"{site.broker.tolerate_down} would tolerate "
               f"every one of the {len(site.broker.urls)} broker URL(s) being down: use at "
               f"most {len(site.broker.urls) - 1}", "error")


def _rabbitmq_only(site: Site) -> Iterator[Finding]:
    """Keys only RabbitMQ honours: on Redis they would change nothing and promise what
    the broker does not do (a delivery limit, dead letters, confirmed sends)."""
    if site.broker.is_rabbitmq:
        return
    why = f"the broker is {site.broker.scheme}://, which has no {{}}; remove {{}} (RabbitMQ only)"
    for index, queue in enumerate(site.queues):
        here = ("queues", index)
        if queue.type == "quorum":
            yield ((*here, "type"), why.format("quorum queues", "it"), "error")
        if queue.delivery_limit is not None:
            yield ((*here, "delivery_limit"), why.format("delivery limit", "it"), "error")
        if queue.dead_letter:
            yield ((*here, "dead_letter"), why.format("dead-lettering", "it"), "error")
    if site.default_queue_type is not None:
        yield (("default_queue_type",), why.format("queue types", "it"), "error")
    if "confirm_publish" in site.broker.model_fields_set:
        yield (("broker", "confirm_publish"), why.format("publisher confirms", "it"), "error")


def _flower(site: Site) -> Iterator[Finding]:
    flower = site.flower
    if not flower.enabled:
        return
    if not flower.auth and not flower.insecure_no_auth and not is_loopback(flower.address):
        yield (("flower", "address"), f"Flower on {flower.address} without auth would let "
               "anyone who can reach it run and revoke tasks: add flower.auth, bind to "
               "127.0.0.1, or set insecure_no_auth: true", "error")
    for index, url in enumerate([*site.broker.urls, site.results.backend or ""]):
        parts = urlsplit(SECRET_REFERENCE.sub("x", url))
        if parts.port == flower.port and _same_host(parts.hostname, flower.address):
            where: Loc = ("broker", "urls", index) if index < len(site.broker.urls) else (
                "results", "backend")
            yield (("flower", "port"), f"port {flower.port} is already used by {_fmt(where)}",
                   "error")


def _secrets(site: Site) -> Iterator[Finding]:
    uses_secrets = any(SECRET_REFERENCE.search(url) for url in site.broker.urls) or bool(
        site.results.backend and SECRET_REFERENCE.search(site.results.backend)) or bool(
        site.flower.enabled and site.flower.auth)
    if uses_secrets and site.secrets_file is None:
        yield (("secrets_file",), "the site references ${...} secrets: name the file that "
               "holds them (KEY=value lines, mode 0600) in secrets_file", "error")
    for name, value in site.environment.items():
        if "${" in value:
            yield (("environment", name), "environment values are not expanded: put secrets "
                   "in the secrets_file, and give plain values here", "error")


def _executable(site: Site) -> Iterator[Finding]:
    if (site.venv is None) == (site.celery is None):
        yield (("venv",), "give exactly one of venv (the application's virtualenv) or celery "
               "(the path of its celery program)", "error")
    if site.systemd.scope == "user" and (site.user or site.group):
        yield (("user",), "user units run as the user who owns them: remove user/group or "
               "use systemd.scope: system", "error")


def _schedule(site: Site) -> Iterator[Finding]:
    for index, entry in enumerate(site.beat.schedule):
        here: Loc = ("beat", "schedule", index)
        if (entry.cron is None) == (entry.every is None):
            yield (here, "give exactly one of cron (crontab fields) or every (seconds)",
                   "error")
        # Task arguments are shown by Flower (and kept in flower.db): a secret has no
        # place there, and they are passed as written, never expanded.
        values: list[tuple[Loc, object]] = [
            *(((*here, "args", i), arg) for i, arg in enumerate(entry.args)),
            *(((*here, "kwargs", key), value) for key, value in entry.kwargs.items())]
        for where, value in values:
            if isinstance(value, str) and "${" in value:
                yield (where, "task arguments are not expanded, and Flower shows them to "
                       "its users: ${...} references belong in broker.urls, results.backend "
                       "and flower.auth only; let the task read its secret itself", "error")


# Set by the units themselves; an EnvironmentFile= would override them (and FLOWER_* would
# change Flower's address or auth behind the checks above).
RESERVED_ENV_PREFIXES = ("CRATE_DEPLOY_", "FLOWER_")


def _environment(site: Site) -> Iterator[Finding]:
    for name in site.environment:
        if name.upper().startswith(RESERVED_ENV_PREFIXES):
            yield (("environment", name), f"{name} is reserved: crate-deploy sets CRATE_DEPLOY_* "
                   "itself, and Flower's options go under flower", "error")


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _same_host(host: str | None, address: str) -> bool:
    if host is None:
        return False
    return host == address or (is_loopback(host) and is_loopback(address)) or (
        address in ("0.0.0.0", "::"))  # noqa: S104 - comparing, not binding


def _fmt(loc: Loc) -> str:
    return format_loc(loc)


RULES: dict[str, Callable[[Site], Iterator[Finding]]] = {
    "unique names": _unique_names, "queue references": _queue_references,
    "unused queues": _unused_queues, "pool options": _pool_options,
    "stop timeouts": _stop_timeouts, "extra args": _extra_args, "failover": _failover,
    "rabbitmq only": _rabbitmq_only,
    "flower": _flower, "secrets": _secrets, "executable": _executable,
    "schedule": _schedule, "environment": _environment, "hosts": host_findings,
}
