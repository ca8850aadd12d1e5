"""A small Celery application for trying crate-deploy: quick, slow and failing tasks.

Like CRATE, it configures itself at import time (CRATE from its Django settings, with no
namespace; this one from a settings object, with namespace="CELERY"), with values that
crate-deploy's rendered settings must override for the workers (prefetch 8, early acks,
its own default queue). Its task senders are not wired to crate_deploy_producer, so
`crate-deploy check` reports each task as stranded: send_tasks.py sends through
crate_deploy_app instead (docs/producers.md).
"""

import socket
import time

from celery import Celery


class DemoSettings:
    """What the application would set on its own; crate-deploy's settings win over these."""

    CELERY_WORKER_PREFETCH_MULTIPLIER = 8
    CELERY_TASK_ACKS_LATE = False
    CELERY_TASK_DEFAULT_QUEUE = "not-the-rendered-queue"


app = Celery("demoapp")
app.config_from_object(DemoSettings, namespace="CELERY")


@app.task(bind=True)
def quick(self, value=0):
    """Return which node (and machine) ran it, so tests can prove each queue's pool did the
    work, on the host the site put it on."""
    return {"value": value, "node": self.request.hostname, "host": socket.gethostname()}


@app.task(bind=True)
def slow(self, seconds=5.0, value=0):
    """Sleep like a long report, then say who ran it."""
    time.sleep(seconds)
    return {"value": value, "node": self.request.hostname, "host": socket.gethostname()}


@app.task
def failing(message="this task always fails"):
    raise RuntimeError(message)


@app.task
def tick():
    """Sent by beat every 30 seconds."""
    return time.time()
