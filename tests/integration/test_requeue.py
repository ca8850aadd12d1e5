"""requeue against the real RabbitMQ: what the broker dead-letters goes back, counted."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from tests.conftest import Result
from tests.rabbit import amqp_url, temporary_vhost

pytestmark = pytest.mark.slow


@pytest.fixture
def vhost() -> Iterator[str]:
    with temporary_vhost("cd-requeue") as name:
        yield name


def render_site(run_cli: Callable[..., Result], tmp_path: Path, vhost: str) -> Path:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("BROKER_PASSWORD=guest\n")
    secrets.chmod(0o600)
    site = tmp_path / "site.yaml"
    site.write_text(json.dumps({
        "project": "rq", "app": "rqapp", "celery": "/usr/bin/celery",
        "celery_version": "5.7.0", "secrets_file": str(secrets),
        "broker": {"urls": [amqp_url(vhost, "${BROKER_PASSWORD}")]},
        "queues": [{"name": "work", "type": "quorum", "delivery_limit": 2, "dead_letter": True},
                   {"name": "other"}],
        "workers": [{"name": "w", "queues": ["work", "other"]}],
    }))
    out = tmp_path / "out"
    result = run_cli("render", site, "-o", out)
    assert result.code == 0, result.err
    return out


def park(vhost: str, count: int) -> None:
    """Declare the queues as the rendered config does, and dead-letter `count` tasks."""
    dead = Exchange("rq.dead-letter", type="direct")
    with Connection(amqp_url(vhost), transport_options={"confirm_publish": True}) as connection:
        channel = connection.default_channel
        Queue("work.dead", dead, routing_key="work", queue_arguments={"x-queue-type": "quorum"},
              channel=channel).declare()
        Queue("work", Exchange("work", type="direct"), routing_key="work", channel=channel,
              queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": 2,
                               "x-dead-letter-exchange": "rq.dead-letter",
                               "x-dead-letter-routing-key": "work"}).declare()
        producer = connection.Producer(channel)
        for index in range(count):
            producer.publish({"n": index}, exchange="work", routing_key="work",
                             headers={"task": "rqapp.poison", "id": f"task-{index}"})
        rejected = 0
        deadline = time.monotonic() + 10
        while rejected < count and time.monotonic() < deadline:
            message = channel.basic_get(queue="work", no_ack=False)
            if message is None:  # a quorum queue may take a moment to offer what it took
                time.sleep(0.05)
                continue
            channel.basic_reject(message.delivery_tag, requeue=False)
            rejected += 1
        assert rejected == count
    deadline = time.monotonic() + 10
    while depth(vhost, "work.dead") < count and time.monotonic() < deadline:
        time.sleep(0.05)


def depth(vhost: str, queue: str) -> int:
    with Connection(amqp_url(vhost)) as connection:
        return int(connection.default_channel.queue_declare(queue=queue, passive=True)[1])


def test_requeue_lists_then_moves_every_parked_task(run_cli: Callable[..., Result],
                                                    tmp_path: Path, vhost: str) -> None:
    out = render_site(run_cli, tmp_path, vhost)
    park(vhost, 5)
    assert depth(vhost, "work.dead") == 5

    listed = run_cli("requeue", out, "--dry-run")
    assert listed.code == 0, listed.err
    assert "work.dead: 5 message(s) -> work" in listed.out
    assert "task-0 rqapp.poison (dead-lettered: rejected)" in listed.out
    assert depth(vhost, "work.dead") == 5 and depth(vhost, "work") == 0

    moved = run_cli("requeue", out, "work")
    assert moved.code == 0, moved.err
    assert "work.dead -> work: moved 5 message(s)" in moved.out
    assert depth(vhost, "work.dead") == 0 and depth(vhost, "work") == 5
    with Connection(amqp_url(vhost)) as connection:
        message = connection.default_channel.basic_get(queue="work", no_ack=True)
        assert json.loads(message.body) == {"n": 0}
        assert message.headers["task"] == "rqapp.poison"
        assert "x-death" not in message.headers


def test_requeue_to_another_queue_and_bad_names(run_cli: Callable[..., Result],
                                                tmp_path: Path, vhost: str) -> None:
    out = render_site(run_cli, tmp_path, vhost)
    park(vhost, 2)
    bad = run_cli("requeue", out, "other")
    assert bad.code == 2
    assert "'other' is not a queue with dead_letter: true (those are: work)" in bad.err
    missing = run_cli("requeue", out, "--to", "other")
    assert missing.code == 1
    assert ("queue other does not exist yet (the first worker consuming it declares it); "
            "nothing was moved from work.dead") in missing.err
    assert depth(vhost, "work.dead") == 2
    with Connection(amqp_url(vhost)) as connection:
        Queue("other", channel=connection.default_channel).declare()
    moved = run_cli("requeue", "--to", "other", "-C", out)  # the old spelling still works
    assert moved.code == 0, moved.err
    assert "note: -C is deprecated: give the directory first" in moved.err
    assert "work.dead -> other: moved 2 message(s)" in moved.out
    assert depth(vhost, "other") == 2
