"""crate_deploy_producer: a process that configures the app itself, wired as documented in
docs/producers.md, gets exactly the queues, routes and broker settings the workers get.

Checked in the application venvs' own Celery (5.2.7 and 5.7.0), without a broker: the
producer's app and the worker's app (through crate_deploy_app) are built in separate
interpreters and describe their queue declarations, routing and masking as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from crate_deploy.cli import main
from crate_deploy.plan.producer import OLD_NAMES
from tests.integration.conftest import APP_VENVS

PASSWORD = "s3cret:/@pw"  # characters that would move the host if not encoded

SITE = """\
project: prod
app: {app}
venv: {venv}
celery_version: "{version}"
secrets_file: {secrets}
app_settings:
  style: {style}
broker:
  urls: ["amqp://guest:${{BROKER_PASSWORD}}@127.0.0.1:5672/v1",
         "amqp://guest:${{BROKER_PASSWORD}}@127.0.0.2:5672/v1"]
queues:
  - name: main
  - name: mail
    dead_letter: true
{quorum}default_queue: main
routes:
  shop.tasks.email_*: mail
workers:
  - name: all
    queues: [main, mail{quorum_pool}]
"""
# Celery 5.5+: a quorum queue with a delivery limit, whose arguments a producer must repeat.
QUORUM = "  - name: bulk\n    type: quorum\n    delivery_limit: 5\n    dead_letter: true\n"

# The application's own ways of configuring itself, one per style.
APPS = {
    "lowercase": 'app.config_from_object("crate_deploy_producer")',
    "celery-namespace": 'app.config_from_object("djsettings", namespace="CELERY")',
    "old-uppercase": 'app.config_from_object("djsettings")',
}

DESCRIBE = """\
import json, os, sys
from urllib.parse import quote
from celery.app.utils import find_app
app = find_app(sys.argv[1])
queues = {name: [q.exchange.name, q.exchange.type, q.routing_key, q.durable,
                 q.queue_arguments] for name, q in sorted(app.amqp.queues.items())}
def routed(task):
    return app.amqp.router.route({}, task)["queue"].name
with app.connection_for_write() as conn:
    uri = conn.as_uri(include_password=True)
shown = json.dumps(app.conf.table(with_defaults=False), default=str)  # what inspect conf shows
print(json.dumps({
    "queues": queues, "default": app.conf.task_default_queue,
    "email": routed("shop.tasks.email_user"), "other": routed("shop.tasks.refund"),
    "uri": uri, "confirm": app.conf.broker_transport_options.get("confirm_publish"),
    "serializer": app.conf.task_serializer, "accept": list(app.conf.accept_content),
    "missing": app.conf.task_create_missing_queues,
    "leaks": any(form in shown for form in (os.environ["BROKER_PASSWORD"],
                                            quote(os.environ["BROKER_PASSWORD"], safe=""))),
}))
"""

# Django's error pages (and Celery's `inspect conf`) hide a setting whose *name* says
# PASS/SECRET/KEY...: the password may only sit under such a name.
NAMES_HIDING_THE_SECRET = """\
import json, os, re, crate_deploy_producer as module
from urllib.parse import quote
hidden = re.compile("API|TOKEN|KEY|SECRET|PASS|SIGNATURE", re.I)
secret = os.environ["BROKER_PASSWORD"]
forms = (secret, quote(secret, safe=""))
print(json.dumps(sorted(name for name in module.__all__ if not hidden.search(name)
                        and any(form in str(getattr(module, name)) for form in forms))))
"""


def _venv(key: str) -> Path:
    venv = APP_VENVS[key]
    if not (venv / "bin" / "python").is_file():
        pytest.skip(f"{venv} is missing (build it with .ci/app-venvs)")
    return venv


def _python(venv: Path, *args: str, cwd: Path) -> str:
    env = {**os.environ, "BROKER_PASSWORD": PASSWORD, "PYTHONPATH": str(cwd)}
    result = subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("key", sorted(APP_VENVS))
def test_old_names_are_the_targets_own(key: str) -> None:
    venv = _venv(key)
    code = ("import json; from celery.app import defaults as d; "
            "print(json.dumps({k: d._TO_OLD_KEY[k] for k in d.DEFAULTS if k in d._TO_OLD_KEY}))")
    theirs = json.loads(_python(venv, "-c", code, cwd=Path.cwd()))
    known = {key: name for key, name in OLD_NAMES.items() if key in theirs}
    assert known == {key: theirs[key] for key in known}
    # Only settings the target does not have at all may be missing from its table.
    assert set(OLD_NAMES) - set(known) <= {"task_default_queue_type"}


@pytest.mark.parametrize("style", sorted(APPS))
@pytest.mark.parametrize("key", sorted(APP_VENVS))
def test_a_wired_app_declares_and_routes_like_the_workers(tmp_path: Path, key: str,
                                                          style: str) -> None:
    venv = _venv(key)
    version = "5.2.7" if key == "celery52" else "5.7.0"
    (tmp_path / "shopapp.py").write_text(textwrap.dedent(f"""\
        from celery import Celery
        app = Celery("shop")
        {APPS[style]}
    """))
    (tmp_path / "plainapp.py").write_text('from celery import Celery\napp = Celery("plain")\n')
    (tmp_path / "djsettings.py").write_text("DEBUG = False\nfrom crate_deploy_producer import *\n")
    (tmp_path / "describe.py").write_text(DESCRIBE)
    out = tmp_path / "out"
    for app, target in (("plainapp", "worker"), ("shopapp", "producer")):
        site = tmp_path / f"{target}.yaml"
        quorum = key != "celery52"
        site.write_text(SITE.format(app=app, venv=venv, version=version, style=style,
                                    secrets=tmp_path / "secrets.env",
                                    quorum=QUORUM if quorum else "",
                                    quorum_pool=", bulk" if quorum else ""))
        with pytest.raises(SystemExit) as exit_info:
            main(["render", str(site), "-o", str(out / target)])
        assert exit_info.value.code == 0
    producer_file = (out / "producer" / "crate_deploy_producer.py").read_text()
    assert PASSWORD not in producer_file and "${BROKER_PASSWORD}" in producer_file

    worker = json.loads(_python(venv, str(tmp_path / "describe.py"), "crate_deploy_app",
                                cwd=out / "worker"))
    (out / "producer" / "shopapp.py").write_text((tmp_path / "shopapp.py").read_text())
    (out / "producer" / "djsettings.py").write_text((tmp_path / "djsettings.py").read_text())
    producer = json.loads(_python(venv, str(tmp_path / "describe.py"), "shopapp",
                                  cwd=out / "producer"))

    assert producer == worker
    assert producer["queues"]["mail"][4] == {"x-dead-letter-exchange": "prod.dead-letter",
                                             "x-dead-letter-routing-key": "mail"}
    assert (producer["default"], producer["email"], producer["other"]) == ("main", "mail", "main")
    if key != "celery52":
        assert producer["queues"]["bulk"][4] == {
            "x-queue-type": "quorum", "x-delivery-limit": 5,
            "x-dead-letter-exchange": "prod.dead-letter", "x-dead-letter-routing-key": "bulk"}
    assert producer["confirm"] is True and producer["missing"] is False
    # (kombu's as_uri encodes the password once more: both sides hold the same password)
    assert producer["uri"] == worker["uri"] and "guest:s3cret%3A%2F%40pw@" in producer["uri"]
    assert not producer["leaks"], "the password shows in the app's masked settings"
    exposed = _python(venv, "-c", NAMES_HIDING_THE_SECRET, cwd=out / "producer")
    assert json.loads(exposed) == [], "the password sits in a setting shown unmasked"


def test_unwired_app_sends_to_celery(tmp_path: Path) -> None:
    """The failure the producer module exists for: the app's own default queue."""
    venv = _venv("celery57")
    (tmp_path / "shopapp.py").write_text('from celery import Celery\napp = Celery("shop")\n')
    code = "import shopapp; print(shopapp.app.amqp.router.route({}, 'x.y')['queue'].name)"
    assert _python(venv, "-c", code, cwd=tmp_path).strip() == "celery"
