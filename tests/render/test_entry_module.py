"""The rendered entry module (crate_deploy_app.py) imported for real, with Celery, in a
fresh interpreter: it resolves ${NAME} references into what Celery connects with, and
into nothing `celery inspect conf` can show, whatever the application's config style."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Result

SECRETS = {"BROKER_PASSWORD": "Br0ker-PW-e1e2", "REDIS_PASSWORD": "Red1s-PW-a8a9",
           "FLOWER_PASSWORD": "Fl0wer-PW-c3c4"}
APPS = {
    "plain": "from celery import Celery\napp = Celery('x')\n",
    "namespace": "from celery import Celery\nclass S:\n    CELERY_TASK_ACKS_LATE = False\n"
                 "app = Celery('x')\napp.config_from_object(S, namespace='CELERY')\n",
    "no-namespace": "from celery import Celery\nclass S:\n    CELERY_ACKS_LATE = False\n"
                    "    BROKER_URL = 'amqp://nobody@127.0.0.1:1//'\n"
                    "app = Celery('x')\napp.config_from_object(S)\n",
}
SITE = """\
    project: demo
    app: theapp
    celery: /usr/bin/celery
    secrets_file: secrets.env
    broker:
      urls: ["amqp://demo:${BROKER_PASSWORD}@127.0.0.1:5672//",
             "amqp://demo:${BROKER_PASSWORD}@127.0.0.2:5672//"]
    results:
      backend: "redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0"
    workers:
      - name: default
        queues: [celery]
    beat:
      enabled: true
      schedule:
        - name: nightly
          task: theapp.nightly
          every: 60
          args: ["plain"]
    flower:
      enabled: true
      auth:
        - user: admin
          password: ${FLOWER_PASSWORD}
"""
PROBE = """\
import json, os
from celery.utils.imports import symbol_by_name
import crate_deploy_app as entry
conf = entry.app.conf
print(json.dumps({
    "table": conf.table(with_defaults=False, censored=False),
    "broker": entry.app.connection_for_write().as_uri(include_password=True),
    "read": entry.app.connection_for_read().as_uri(include_password=True),
    "backend": conf.result_backend,
    "args": conf.beat_schedule["nightly"]["args"] if "beat_schedule" in conf else
            conf["CELERY_BEAT_SCHEDULE"]["nightly"]["args"] if "CELERY_BEAT_SCHEDULE" in conf
            else conf["CELERYBEAT_SCHEDULE"]["nightly"]["args"],
    "flower_auth": os.environ.get("FLOWER_BASIC_AUTH"),
    "consumer": [f"{c.__module__}:{c.__qualname__}"
                 for c in symbol_by_name(entry.app.conf.worker_consumer).__mro__[:3]],
}, default=repr))
"""


def _import_entry(out: Path, app: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (out / "theapp.py").write_text(app)
    return subprocess.run([sys.executable, "-c", PROBE], cwd=out, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": str(out), **env})


@pytest.fixture
def rendered(tmp_path: Path, run_cli: Callable[..., Result]) -> Path:
    (tmp_path / "site.yaml").write_text(textwrap.dedent(SITE))
    out = tmp_path / "out"
    result = run_cli("render", tmp_path / "site.yaml", "-o", out)
    assert result.code == 0, result.err
    return out


@pytest.mark.parametrize("style", sorted(APPS))
def test_resolved_urls_reach_celery_but_never_app_conf(rendered: Path, style: str) -> None:
    result = _import_entry(rendered, APPS[style], SECRETS)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    table = json.dumps(seen["table"])
    for value in SECRETS.values():  # uncensored: no reliance on Celery's key-name guesses
        assert value not in table, f"app.conf holds a secret ({style})"
    assert "${BROKER_PASSWORD}" in table  # what conf holds instead
    assert seen["broker"] == seen["read"] == (
        f"amqp://demo:{SECRETS['BROKER_PASSWORD']}@127.0.0.1:5672//")
    assert seen["backend"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@127.0.0.1:6379/0"
    assert seen["flower_auth"] is None  # only the Flower unit sets it
    # The worker's events go out on a connection without confirm waits (issue 12).
    assert seen["consumer"] == ["crate_deploy_app:Consumer",
                                "crate_deploy_app:_EventsWithoutConfirmWaits",
                                "celery.worker.consumer.consumer:Consumer"]


def test_the_applications_own_consumer_class_is_kept_under_the_events_mixin(
        rendered: Path) -> None:
    app = APPS["plain"] + textwrap.dedent("""\
        from celery.worker.consumer import Consumer
        class MyConsumer(Consumer):
            pass
        app.conf.worker_consumer = "theapp:MyConsumer"
        """)
    result = _import_entry(rendered, app, SECRETS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["consumer"][1:] == [
        "crate_deploy_app:_EventsWithoutConfirmWaits", "theapp:MyConsumer"]


def test_without_publisher_confirms_the_consumer_is_celerys_own(rendered: Path) -> None:
    config = rendered / "crate_deploy_celeryconfig.py"
    config.write_text(config.read_text().replace("'confirm_publish': True",
                                                 "'confirm_publish': False"))
    result = _import_entry(rendered, APPS["plain"], SECRETS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["consumer"][0] == "celery.worker.consumer.consumer:Consumer"


def test_task_arguments_are_never_expanded(rendered: Path) -> None:
    """Validation refuses ${...} in beat arguments; should one reach the config anyway
    (a hand edit), it stays literal: it is never filled from the environment."""
    config = rendered / "crate_deploy_celeryconfig.py"
    config.write_text(config.read_text().replace("'plain'", "'${BROKER_PASSWORD}'"))
    result = _import_entry(rendered, APPS["plain"], SECRETS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["args"] == ["${BROKER_PASSWORD}"]


def test_flower_refuses_to_start_with_an_empty_password(rendered: Path) -> None:
    result = _import_entry(rendered, APPS["plain"], {
        **SECRETS, "FLOWER_PASSWORD": "", "FLOWER_BASIC_AUTH": "admin:${FLOWER_PASSWORD}"})
    assert result.returncode != 0
    assert "the Flower password of 'admin' is empty" in result.stderr


FAST_PROBE = """\
import json, logging
import crate_deploy_app as entry
print(json.dumps({
    "backend": [f"{c.__module__}:{c.__qualname__}" for c in type(entry.app.backend).__mro__[:3]],
    "amqp": [c.__qualname__ for c in type(entry.app.amqp).__mro__[:2]],
    "levels": [logging.getLogger(name).level
               for name in ("celery.worker.strategy", "celery.app.trace")],
}))
"""


@pytest.mark.parametrize("delivery", ["reliable", "fast"])
def test_fast_delivery_hooks_rpc_results_and_quiets_per_task_lines(
        tmp_path: Path, run_cli: Callable[..., Result], delivery: str) -> None:
    """Under fast, rpc:// results come from Celery's backend with the mixin that marks
    their publish, app.amqp hands that publish its own pool, and the two per-task
    loggers of the pool named in CRATE_DEPLOY_POOL are at WARNING; reliable: untouched."""
    site = SITE.replace('"redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0"', '"rpc://"')
    (tmp_path / "site.yaml").write_text(textwrap.dedent(site) + f"delivery: {delivery}\n")
    out = tmp_path / "out"
    assert run_cli("render", tmp_path / "site.yaml", "-o", out).code == 0
    (out / "theapp.py").write_text(APPS["plain"])
    result = subprocess.run([sys.executable, "-c", FAST_PROBE], cwd=out, capture_output=True,
                            text=True, timeout=120, check=False,
                            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(out),
                                 "CRATE_DEPLOY_POOL": "default", **SECRETS})
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    if delivery == "fast":
        assert seen["backend"] == ["crate_deploy_app:RPCBackend",
                                   "crate_deploy_app:_ResultsWithoutConfirmWaits",
                                   "celery.backends.rpc:RPCBackend"]
        assert seen["amqp"] == ["AMQP", "_ResultProducers"]
        assert seen["levels"] == [logging.WARNING, logging.WARNING]
    else:
        assert seen["backend"][0] == "celery.backends.rpc:RPCBackend"
        assert seen["amqp"][1] == "object"
        assert seen["levels"] == [logging.NOTSET, logging.NOTSET]


def test_fast_delivery_says_so_when_the_app_built_its_backend_first(
        tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    """An application that asks for app.backend at import keeps that (confirmed) backend:
    the entry module says so rather than leaving results confirmed in silence."""
    site = SITE.replace('"redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0"', '"rpc://"')
    (tmp_path / "site.yaml").write_text(textwrap.dedent(site) + "delivery: fast\n")
    out = tmp_path / "out"
    assert run_cli("render", tmp_path / "site.yaml", "-o", out).code == 0
    (out / "theapp.py").write_text("from celery import Celery\n"
                                   "app = Celery('x', backend='rpc://')\napp.backend\n")
    probe = "import crate_deploy_app as entry\nprint(type(entry.app.backend).__module__)\n"
    result = subprocess.run([sys.executable, "-c", probe], cwd=out, capture_output=True,
                            text=True, timeout=120, check=False,
                            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(out),
                                 "CRATE_DEPLOY_POOL": "default", **SECRETS})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "celery.backends.rpc"
    assert ("crate-deploy: delivery: fast: the application built its result backend before "
            "crate-deploy could change it; results keep their confirm waits") in result.stderr
