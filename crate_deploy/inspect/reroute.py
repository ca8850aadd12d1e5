"""`crate-deploy requeue --stranded QUEUE`: move tasks off a queue no pool consumes, each to
the queue the site routes it to now.

What happens to tasks sent before the application's senders were wired to the site's
routing (docs/producers.md): they wait on the queue they were sent to (usually `celery`)
until moved. Each message goes where the site's routes (else its default queue) send its
task, with requeue's publish-confirm-then-ack move, so an interruption can at worst leave
one message on both queues; --dry-run lists where each would go and moves nothing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import click

from crate_deploy.errors import LaunchError, UsageError
from crate_deploy.inspect import probe
from crate_deploy.inspect.requeue import (
    Move,
    _body_task,
    _depth,
    publish_then_ack,
    watch_returns,
)
from crate_deploy.site.model import Site
from crate_deploy.state.deployment import broker_urls, load_deployment, masker_for, read_secrets


def reroute_command(directory: Path, queues: tuple[str, ...], *, dry_run: bool) -> int:
    deployment = load_deployment(directory)
    site = deployment.site
    _check_sources(site, queues)
    secrets = read_secrets(site)
    urls = broker_urls(site, secrets)
    probe.check_broker(urls, masker_for(secrets))
    route = site_router(site)
    from kombu.connection import Connection

    total = 0
    with Connection(urls) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        for queue in queues:
            total += _reroute(channel, queue, route, dry_run)
    click.echo(f"{'would move' if dry_run else 'moved'} {total} message(s) in all")
    return 0


def site_router(site: Site) -> Any:
    """task name -> the queue the site sends it to, by Celery's own route matching."""
    from celery.app.routes import MapRoute

    routes = MapRoute({pattern: {"queue": queue} for pattern, queue in site.routes.items()})

    def route(task: str) -> str:
        found = routes(task)
        return str(found["queue"]) if found else site.main_queue

    return route


def _check_sources(site: Site, queues: tuple[str, ...]) -> None:
    if not site.broker.is_rabbitmq:
        raise UsageError("requeue works with RabbitMQ (amqp://) brokers only")
    consumed = site.consumed_queues
    for name in queues:
        if name in consumed:
            raise UsageError(f"a pool of this site consumes {name!r}: its tasks are not stranded")


def _reroute(channel: Any, queue: str, route: Any, dry_run: bool) -> int:
    depth = _depth(channel, queue)
    if not depth:
        click.echo(f"{queue}: {'no such queue' if depth is None else 'empty'}")
        return 0
    taken, moved, where = [], 0, Counter[str]()
    returned = watch_returns(channel)
    try:
        for _ in range(depth):  # only what was there when we started
            message = channel.basic_get(queue=queue, no_ack=False)
            if message is None:
                break
            task = _task_name(message)
            target = route(task)
            where[target] += 1
            if dry_run:
                taken.append(message.delivery_tag)
                click.echo(f"  {task} -> {target}")
                continue
            if _depth(channel, target) is None:
                channel.basic_reject(message.delivery_tag, requeue=True)
                raise LaunchError(f"queue {target} does not exist yet (the first worker consuming "
                                  f"it declares it); {moved} moved, the rest stay in {queue}")
            publish_then_ack(channel, message, Move(queue, target), moved, returned)
            moved += 1
    finally:
        for tag in taken:  # a dry run gives every message back
            channel.basic_reject(tag, requeue=True)
    counts = ", ".join(f"{count} -> {target}" for target, count in sorted(where.items()))
    click.echo(f"{queue}: {'would move' if dry_run else 'moved'} {sum(where.values())} "
               f"message(s) ({counts})")
    return sum(where.values())


def _task_name(message: Any) -> str:
    headers = message.properties.get("application_headers") or {}
    return str(headers.get("task") or _body_task(message.body))
