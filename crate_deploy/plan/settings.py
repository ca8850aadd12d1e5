"""What the site means for Celery and Flower: pure functions from a Site to settings.

The values are plain literals (str, int, float, bool, None, list, dict); the
renderer writes them into Python modules with repr(), so no value from the site
file can ever become code. Crontab schedules are written as {"crontab": {...}} and
turned into crontab() objects by the rendered entry module.
"""

from __future__ import annotations

from typing import Any

from crate_deploy.plan.names import FLOWER_DB_FILE
from crate_deploy.site.checks import STOP_MARGIN, stop_timeout
from crate_deploy.site.fields import SECRET_REFERENCE
from crate_deploy.site.model import Queue, ScheduleEntry, Site, Worker

Settings = dict[str, Any]


def celery_settings(site: Site) -> Settings:
    """Settings shared by every process of the site (worker pools, beat, Flower)."""
    settings: Settings = {
        "broker_url": site.broker.urls if len(site.broker.urls) > 1 else site.broker.urls[0],
        "broker_failover_strategy": site.broker.failover_strategy,
        "broker_heartbeat": site.broker.heartbeat,
        "broker_connection_timeout": site.broker.connection_timeout,
        "broker_transport_options": _transport_options(site),
    }
    if site.broker.connection_retries is not None:
        settings["broker_connection_max_retries"] = site.broker.connection_retries
    # Celery 5.3+ warns unless this is set; compat.py leaves it out for older targets.
    settings["broker_connection_retry_on_startup"] = True
    settings.update(_results(site))
    settings.update({
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_accept_content": ["json"],
        "task_default_delivery_mode": "persistent",
        "task_queues": {queue.name: _queue(site, queue) for queue in site.queues},
        "task_default_queue": site.main_queue,
        "task_default_exchange": site.main_queue,
        "task_default_routing_key": site.main_queue,
        **({"task_default_queue_type": site.default_queue_type}
           if site.default_queue_type else {}),
        # A route to a queue the site does not declare must fail, not invent a queue.
        "task_create_missing_queues": False,
        "task_routes": _routes(site),
        "worker_send_task_events": site.flower.enabled,
        "task_send_sent_event": _sent_events(site),
    })
    if site.beat.enabled:
        # rpc:// results go back to the sender alone, and beat never reads them: sent
        # without ignore_result, each beat run would declare a reply queue that keeps
        # every result for results.expires after beat has gone.
        unread = (site.results.backend or "").startswith("rpc")
        settings["beat_schedule"] = {e.name: _schedule_entry(e, unread)
                                     for e in site.beat.schedule}
    return settings


def pool_settings(site: Site) -> dict[str, Settings]:
    """Per-pool overrides, applied by the entry module for the pool a unit runs."""
    return {worker.name: _pool(worker, task_events(site, worker)) for worker in site.workers}


def task_events(site: Site, worker: Worker) -> bool | None:
    """Whether a pool sends task events: its own key, else off under `delivery: fast`,
    else None (Celery's worker_send_task_events, on when Flower is)."""
    if worker.task_events is None and site.delivery == "fast":
        return False
    return worker.task_events


def delivery_settings(site: Site) -> Settings:
    """What `delivery: fast` asks of the entry module (empty for reliable): whether the
    pools publish rpc:// results without confirm waits, and the pools whose per-task INFO
    lines (received, succeeded) are off. A pool that sets log_level keeps Celery's lines."""
    if site.delivery != "fast":
        return {}
    return {
        # Other backends never waited for a publisher confirm: redis or SQL writes.
        "unconfirmed_results": (site.results.backend or "").startswith("rpc://")
        and _mandatory_publishes(site),
        "quiet_task_logs": [worker.name for worker in site.workers
                            if "log_level" not in worker.model_fields_set],
    }


def dead_letter_queues(site: Site) -> list[Settings]:
    """Queues that keep what the broker dead-letters, one per queue that asks for it."""
    return [{
        "exchange": _dead_letter_exchange(site),
        "queue": f"{queue.name}.dead",
        "routing_key": queue.name,
        "arguments": {"x-queue-type": queue.type},
    } for queue in site.queues if queue.dead_letter]


def flower_options(site: Site, state_dir: str) -> Settings:
    flower = site.flower
    options: Settings = {
        "address": flower.address,
        "port": flower.port,
        "max_tasks": flower.max_tasks,
        "persistent": flower.persistent,
    }
    if flower.persistent:
        options["db"] = f"{state_dir}/{FLOWER_DB_FILE}"
    if any(task_events(site, worker) is False for worker in site.workers):
        # Flower otherwise broadcasts enable_events to every worker every 5 s, which
        # turns a pool's task events back on; the pools send theirs by configuration.
        options["enable_events"] = False
    if flower.url_prefix:
        options["url_prefix"] = flower.url_prefix
    if flower.purge_offline_workers is not None:
        options["purge_offline_workers"] = flower.purge_offline_workers
    if flower.read_only is not None:
        options["read_only"] = flower.read_only
    return options


def flower_basic_auth(site: Site) -> str:
    """FLOWER_BASIC_AUTH with ${NAME} references, resolved by the entry module at start."""
    return ",".join(f"{user.user}:{user.password}" for user in site.flower.auth)


def flower_only_secrets(site: Site) -> list[str]:
    """Secrets only Flower needs (its users' passwords): the other services' units unset
    them, so a pool or beat never holds a password it has no use for."""
    if not site.flower.enabled:
        return []
    used_elsewhere = {name for url in [*site.broker.urls, site.results.backend or ""]
                      for name in SECRET_REFERENCE.findall(url)}
    return sorted({name for user in site.flower.auth
                   for name in SECRET_REFERENCE.findall(user.password)} - used_elsewhere)


def _transport_options(site: Site) -> Settings:
    scheme = site.broker.scheme
    if scheme.startswith("redis") or scheme == "sentinel":
        # Redis redelivers unacknowledged tasks after the visibility timeout: it must be
        # longer than any task may run, or a long task runs twice.
        longest = max(stop_timeout(site, worker) for worker in site.workers)
        return {"visibility_timeout": int(max(3600.0, longest + STOP_MARGIN))}
    return {"confirm_publish": site.broker.confirm_publish}


def _routes(site: Site) -> Settings:
    """The site's routes; with publisher confirms on AMQP, every task publish mandatory.

    RabbitMQ confirms a message that reached no live queue: with a classic queue whose
    node is down (or a queue deleted), a sender that declared the queue earlier on its
    connection (kombu remembers, and does not declare it again) gets a confirm for a
    message that is gone. Mandatory, it gets the message back (312 NO_ROUTE) and the
    publish raises instead: not confirmed, the sender's to retry. Celery has no setting
    for it but passes a route's options to the publish, so every route carries it and a
    last catch-all route (to the default queue, where Celery sends an unrouted task
    anyway) covers the rest. Without confirms a return would arrive later, outside the
    publish, and break whichever call reads it: left out then."""
    routes: Settings = {pattern: {"queue": queue} for pattern, queue in site.routes.items()}
    if not _mandatory_publishes(site):
        return routes
    routes.setdefault("*", {"queue": site.main_queue})
    return {pattern: {**route, "mandatory": True} for pattern, route in routes.items()}


def _mandatory_publishes(site: Site) -> bool:
    return site.broker.is_rabbitmq and site.broker.confirm_publish


def delivery_note(site: Site) -> str | None:
    """What render says when `delivery: fast` leaves results as they were: the site
    then trades events and log lines only, and should not believe otherwise."""
    backend = site.results.backend
    if site.delivery != "fast" or backend is None or delivery_settings(site)[
            "unconfirmed_results"]:
        return None
    if not backend.startswith("rpc://"):
        why = f"{backend.partition('://')[0]}:// results never waited for a publisher confirm"
    elif site.broker.is_rabbitmq:
        why = "broker.confirm_publish is false, so nothing waited for a confirm"
    else:
        why = f"a {site.broker.scheme}:// broker has no publisher confirms"
    return (f"delivery: fast: results go out as before, {why}; fast turns off only task "
            "events and per-task log lines")


def _sent_events(site: Site) -> bool:
    """task-sent events, for Flower. Under `delivery: fast` only while a pool sends the
    events that follow them: else Flower would list every task as sent, forever, and each
    send would wait for a second confirm."""
    if site.delivery == "fast":
        return site.flower.enabled and any(
            task_events(site, worker) for worker in site.workers)
    return site.flower.enabled


def _results(site: Site) -> Settings:
    if site.results.backend is None:
        return {"task_ignore_result": True}
    return {"result_backend": site.results.backend, "result_expires": site.results.expires}


def _queue(site: Site, queue: Queue) -> Settings:
    arguments: Settings = {}
    if queue.type == "quorum":
        arguments["x-queue-type"] = "quorum"
    if queue.delivery_limit is not None:
        arguments["x-delivery-limit"] = queue.delivery_limit
    if queue.dead_letter:
        arguments["x-dead-letter-exchange"] = _dead_letter_exchange(site)
        arguments["x-dead-letter-routing-key"] = queue.name
    return {
        "exchange": queue.name,
        # Celery 5.5+ delays countdown/ETA tasks natively on quorum queues, which needs a
        # topic exchange: with a direct one they block the worker instead.
        "exchange_type": "topic" if queue.type == "quorum" else "direct",
        "routing_key": queue.name,
        "durable": queue.durable,
        "queue_arguments": arguments,
    }


def _dead_letter_exchange(site: Site) -> str:
    return f"{site.project}.dead-letter"


def _schedule_entry(entry: ScheduleEntry, ignore_result: bool) -> Settings:
    schedule: Any = entry.every
    if entry.cron is not None:
        schedule = {"crontab": entry.cron.model_dump()}
    result: Settings = {"task": entry.task, "schedule": schedule,
                        "args": list(entry.args), "kwargs": dict(entry.kwargs)}
    options: Settings = {"queue": entry.queue} if entry.queue else {}
    if ignore_result:
        options["ignore_result"] = True
    if options:
        result["options"] = options
    return result


def _pool(worker: Worker, events: bool | None) -> Settings:
    settings: Settings = {
        "worker_prefetch_multiplier": worker.prefetch_multiplier,
        "task_acks_late": worker.acks_late,
        "task_reject_on_worker_lost": worker.reject_on_worker_lost,
        # With late acks the broker redelivers a task whose connection dropped; let the
        # worker cancel its copy instead of running it twice.
        "worker_cancel_long_running_tasks_on_connection_loss": worker.acks_late,
    }
    optional = {
        "worker_send_task_events": events,
        "worker_soft_shutdown_timeout": worker.soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": worker.soft_shutdown_on_idle,
        "worker_detect_quorum_queues": worker.detect_quorum_queues,
        "task_time_limit": worker.time_limit,
        "task_soft_time_limit": worker.soft_time_limit,
        "worker_max_tasks_per_child": worker.max_tasks_per_child,
        "worker_max_memory_per_child": worker.max_memory_per_child,
    }
    settings.update({key: value for key, value in optional.items() if value is not None})
    return settings
