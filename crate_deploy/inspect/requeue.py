"""`crate-deploy requeue`: move dead-lettered tasks back to work, counting them.

CRATE's `resubmit_unprocessed_tasks`, generalised. A queue with `dead_letter: true`
parks what the broker dead-letters (a quorum queue's delivery limit stops a poison
message) in QUEUE.dead. requeue moves each message back to QUEUE (or --to another
queue): it publishes a copy (mandatory, so an unroutable one comes back) with a
publisher confirm and only then acknowledges the original, so an interruption can at
worst leave one message in both queues (Celery tasks must be idempotent under
acks_late anyway); it can never lose one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from crate_deploy.errors import LaunchError, UsageError
from crate_deploy.inspect import probe
from crate_deploy.site.model import Site
from crate_deploy.state.deployment import broker_urls, load_deployment, masker_for, read_secrets

# Headers the broker adds when it dead-letters; a requeued task starts afresh.
_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue",
                  "x-first-death-reason", "x-last-death-exchange", "x-last-death-queue",
                  "x-last-death-reason", "x-delivery-count")


@dataclass(frozen=True)
class Move:
    source: str
    target: str


def requeue_command(directory: Path, queues: tuple[str, ...], *, to: str | None,
                    dry_run: bool) -> int:
    deployment = load_deployment(directory)
    site = deployment.site
    moves = _moves(site, queues, to)
    secrets = read_secrets(site)
    urls = broker_urls(site, secrets)
    probe.check_broker(urls, masker_for(secrets))
    from kombu.connection import Connection

    total = 0
    with Connection(urls) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        for move in moves:
            total += (_list if dry_run else _move)(channel, move)
    verb = "would move" if dry_run else "moved"
    click.echo(f"{verb} {total} message(s) in all")
    return 0


def _moves(site: Site, queues: tuple[str, ...], to: str | None) -> list[Move]:
    parked = [queue.name for queue in site.queues if queue.dead_letter]
    if not site.broker.is_rabbitmq:
        raise UsageError("requeue works with RabbitMQ (amqp://) brokers only")
    if not parked:
        raise UsageError("no queue of this site has dead_letter: true, so nothing is parked")
    for name in queues:
        if name not in parked:
            raise UsageError(f"{name!r} is not a queue with dead_letter: true (those are: "
                             f"{', '.join(parked)})")
    if to is not None and to not in site.queue_names:
        raise UsageError(f"--to {to!r} is not a queue of this site ({', '.join(site.queue_names)})")
    return [Move(f"{name}.dead", to or name) for name in (queues or tuple(parked))]


def _depth(channel: Any, queue: str) -> int | None:
    try:
        return int(channel.queue_declare(queue=queue, passive=True)[1])
    except Exception:  # the dead-letter queue is declared by the first worker
        return None


def _list(channel: Any, move: Move) -> int:
    """Show what is parked without taking it: every message is returned unacknowledged."""
    depth = _depth(channel, move.source)
    held = (f"{depth} message(s)" if depth is not None
            else "not declared yet (no worker has connected since dead_letter was set)")
    click.echo(f"{move.source}: {held} -> {move.target}")
    seen = []
    for _ in range(depth or 0):
        message = channel.basic_get(queue=move.source, no_ack=False)
        if message is None:
            break
        seen.append(message.delivery_tag)
        click.echo(f"  {_describe(message)}")
    for tag in seen:
        channel.basic_reject(tag, requeue=True)
    return depth or 0


def _move(channel: Any, move: Move) -> int:
    depth = _depth(channel, move.source)
    if depth and _depth(channel, move.target) is None:
        # Published to a queue that does not exist, a message would be dropped unroutable.
        raise LaunchError(f"queue {move.target} does not exist yet (the first worker consuming "
                          f"it declares it); nothing was moved from {move.source}")
    moved = 0
    # mandatory: a message the broker cannot route (the queue was deleted meanwhile) is
    # returned to us before its confirm, instead of being dropped in silence.
    returned = watch_returns(channel)
    # Only what was there when we started: a task that dies again is parked again,
    # not moved in a loop.
    for _ in range(depth or 0):
        message = channel.basic_get(queue=move.source, no_ack=False)
        if message is None:
            break
        publish_then_ack(channel, message, move, moved, returned)
        moved += 1
    click.echo(f"{move.source} -> {move.target}: moved {moved} message(s)")
    return moved


def watch_returns(channel: Any) -> list[Exception]:
    """What the broker returns (publishes are mandatory): a message it cannot route, the
    queue deleted meanwhile, comes back before its confirm instead of being dropped."""
    returned: list[Exception] = []
    channel.events["basic_return"].add(lambda exc, *_: returned.append(exc))
    return returned


def publish_then_ack(channel: Any, message: Any, move: Move, moved: int,
                     returned: list[Exception]) -> None:
    """Publish a copy to move.target (mandatory, with a publisher confirm), and only then
    ack the original; a failed or returned publish puts the original back and stops the
    move (`returned` is watch_returns' list for this channel)."""
    import amqp

    properties = dict(message.properties)
    headers = {key: value for key, value in (properties.pop("application_headers", None)
                                             or {}).items() if key not in _DEATH_HEADERS}
    copy = amqp.Message(message.body, application_headers=headers, **properties)
    try:
        channel.basic_publish_confirm(copy, exchange="", routing_key=move.target,
                                      mandatory=True)
    except Exception as exc:
        returned.append(exc)
    if returned:  # not acknowledged, not counted: it stays where it was
        channel.basic_reject(message.delivery_tag, requeue=True)
        raise LaunchError(f"{move.source} -> {move.target}: publishing failed "
                          f"({returned[0] or type(returned[0]).__name__}; was "
                          f"{move.target} deleted?): moved {moved} message(s); the rest "
                          f"stay in {move.source}")
    channel.basic_ack(message.delivery_tag)


def _describe(message: Any) -> str:
    headers = message.properties.get("application_headers") or {}
    deaths = headers.get("x-death") or [{}]
    reason = deaths[0].get("reason", "?") if isinstance(deaths[0], dict) else "?"
    task = headers.get("task") or _body_task(message.body)
    return f"{headers.get('id', '?')} {task} (dead-lettered: {reason})"


def _body_task(body: bytes | str) -> str:
    """Celery's protocol 1 kept the task name in the body."""
    try:
        return str(json.loads(body).get("task", "?"))
    except (ValueError, AttributeError, TypeError):
        return "?"
