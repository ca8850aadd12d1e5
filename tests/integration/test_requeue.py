"""requeue against the real RabbitMQ: what the broker dead-letters goes back, counted."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from tests.conftest import ROOT, Result
from tests.rabbit import amqp_url, temporary_vhost

pytestmark = pytest.mark.slow


@pytest.fixture
def vhost() -> Iterator[str]:
    with temporary_vhost("cd-requeue") as name:
        yield name


QUORUM_QUEUES: list[dict[str, Any]] = [
    {"name": "work", "type": "quorum", "delivery_limit": 2, "dead_letter": True},
    {"name": "other"}]


def render_site(run_cli: Callable[..., Result], tmp_path: Path, vhost: str,
                queues: list[dict[str, Any]] | None = None) -> Path:
    """The site with a dead-lettering queue `work`, rendered into tmp_path/out."""
    queues = queues if queues is not None else QUORUM_QUEUES
    secrets = tmp_path / "secrets.env"
    secrets.write_text("BROKER_PASSWORD=guest\n")
    secrets.chmod(0o600)
    site = tmp_path / "site.yaml"
    site.write_text(json.dumps({
        "project": "rq", "app": "rqapp", "celery": "/usr/bin/celery",
        "celery_version": "5.7.0", "secrets_file": str(secrets),
        "broker": {"urls": [amqp_url(vhost, "${BROKER_PASSWORD}")]},
        "queues": queues,
        "workers": [{"name": "w", "queues": [queue["name"] for queue in queues]}],
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


def test_a_destination_deleted_mid_run_loses_nothing_and_the_count_is_true(
        run_cli: Callable[..., Result], tmp_path: Path, vhost: str) -> None:
    """3,000 parked tasks; the destination queue is deleted while requeue moves them.
    Without mandatory publishing the broker dropped what it could not route (1,136 of
    3,000 vanished) while requeue printed "moved 3000" and exited 0. Now: every message
    is in the destination's consumer, in what the deletion took (counted by the broker),
    or still parked (but for the one in flight at the instant of the deletion); requeue
    fails, and the count it prints is what really moved."""
    import threading

    import amqp

    out = render_site(run_cli, tmp_path, vhost, [{"name": "work", "dead_letter": True}])

    def connect() -> amqp.Connection:
        connection = amqp.Connection(host="127.0.0.1:5672", userid="guest", password="guest",
                                     virtual_host=vhost)
        connection.connect()
        return connection

    total = 3000
    setup = connect()
    channel = setup.channel()
    channel.queue_declare("work.dead", durable=True, auto_delete=False)
    channel.queue_declare("work", durable=True, auto_delete=False)
    channel.confirm_select()
    for index in range(total):
        channel.basic_publish(amqp.Message(json.dumps({"n": index})), "", "work.dead")
    assert depth(vhost, "work.dead") == total

    received: list[int] = []
    stop = threading.Event()

    def consume() -> None:
        connection = connect()
        try:
            consumer = connection.channel()
            consumer.basic_consume("work", no_ack=True, callback=lambda m: received.append(1))
            while not stop.is_set():
                try:
                    connection.drain_events(timeout=0.2)
                except TimeoutError:
                    continue
        except Exception:  # the deletion cancels the consumer (ConsumerCancelled)
            pass
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    proc = subprocess.Popen([sys.executable, "-m", "crate_deploy", "requeue", "work", "-C",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while len(received) < 300 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    deleted = channel.queue_delete("work")  # the broker says how many it took with it
    stdout, stderr = proc.communicate(timeout=300)
    time.sleep(1.0)
    stop.set()
    thread.join(10)
    setup.close()
    remaining = depth(vhost, "work.dead")
    moved = re.findall(r"moved (\d+)", stdout + stderr)
    assert proc.returncode == 1, stdout + stderr
    assert "Traceback" not in stderr
    assert moved, stdout + stderr
    # requeue publishes one message at a time and waits for its confirm: at most that one
    # can be confirmed into the queue in the instant the deletion takes the queue away.
    arrived = len(received) + deleted
    assert 0 <= int(moved[-1]) - arrived <= 1, (stdout + stderr, len(received), deleted)
    assert remaining + int(moved[-1]) == total, (remaining, moved, stdout + stderr)
