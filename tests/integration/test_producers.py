"""The application's own task senders reach the site's pools once wired (docs/producers.md).

Two Django-style applications that configure Celery themselves, in the application venvs
(Celery 5.2.7 and 5.7.0, Django 4.2): `crateish`, shaped like CRATE 0.20.9 (no namespace,
old upper-case settings, `config_from_object("django.conf:settings")`, local settings
star-imported at the end of settings.py), and `nsshop` (`namespace="CELERY"`). A task is
sent by a plain Django process (`django.setup()`, `task.delay()`), never through
crate_deploy_app:

- unwired, `check` fails naming the task and the queue `celery`; a send lands there and
  `status` exits 1 naming it; `requeue --stranded celery` moves it where the site routes it;
- wired (one import line in the local settings), `check` passes and the tasks run on the
  pools the site routes them to.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    Launch,
    fresh_vhost,
    make_demo_site,
    node,
    run_crate_deploy,
    send_from_demoapp,
    wait_for,
)

pytestmark = pytest.mark.slow

STYLES = {  # app name -> (app_settings.style, how its Celery app reads the settings)
    "crateish": ("old-uppercase", 'app.config_from_object("django.conf:settings")'),
    "nsshop": ("celery-namespace",
               'app.config_from_object("django.conf:settings", namespace="CELERY")'),
}

SETTINGS = {
    "crateish": """\
        BROKER_URL = os.environ["APP_OWN_BROKER"]
        CELERY_ACCEPT_CONTENT = ["json"]
        CELERY_RESULT_SERIALIZER = "json"
        CELERY_TASK_SERIALIZER = "json"
        CELERY_RESULT_BACKEND = "rpc://"
    """,
    "nsshop": """\
        CELERY_BROKER_URL = os.environ["APP_OWN_BROKER"]
        CELERY_ACCEPT_CONTENT = ["json"]
        CELERY_RESULT_BACKEND = "rpc://"
    """,
}


def _write_app(base: Path, name: str) -> Path:
    """The Django project `name` under base, with its local settings file (unwired)."""
    package = base / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .celery import app as celery_app\n")
    (package / "settings.py").write_text("import os\n" + textwrap.dedent(f"""\
        SECRET_KEY = "not-a-secret-only-a-test"
        INSTALLED_APPS = ["{name}"]
        DATABASES = {{}}
        USE_TZ = True
    """) + textwrap.dedent(SETTINGS[name]) + textwrap.dedent(f"""\
        # Like CRATE: a local settings file, named by the environment, loaded last.
        import importlib.machinery
        _local = importlib.machinery.SourceFileLoader(
            "local_settings", os.environ["{name.upper()}_LOCAL_SETTINGS"]).load_module()
        from local_settings import *  # noqa
    """))
    (package / "celery.py").write_text(textwrap.dedent(f"""\
        import os
        from celery import Celery
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "{name}.settings")
        app = Celery("{name}")
        {STYLES[name][1]}
        app.autodiscover_tasks(["{name}"])
    """))
    (package / "tasks.py").write_text(textwrap.dedent("""\
        from celery import shared_task

        @shared_task(bind=True)
        def add(self, x, y):
            return {"sum": x + y, "node": self.request.hostname}

        @shared_task(bind=True)
        def email_receipt(self):
            return {"node": self.request.hostname}
    """))
    (package / "send.py").write_text(textwrap.dedent(f"""\
        # A management command, in effect: the application's own code sends the task.
        import json, sys
        import django
        django.setup()
        from {name}.tasks import add, email_receipt
        task = add if sys.argv[1] == "add" else email_receipt
        result = task.delay(2, 3) if task is add else task.delay()
        if sys.argv[2] == "wait":
            print(json.dumps(result.get(timeout=120)))
    """))
    local = base / "local_settings.py"
    local.write_text("# (not wired yet)\n")
    return local


def _send(site: Any, app: str, task: str, wait: bool) -> str:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": f"{app}.settings",
           f"{app.upper()}_LOCAL_SETTINGS": str(site.site_dir / "local_settings.py"),
           "APP_OWN_BROKER": site.broker_url, "BROKER_PASSWORD": site.broker_password,
           "PYTHONPATH": f"{site.out}:{site.site_dir}"}
    result = subprocess.run([str(site.venv / "bin" / "python"), "-m", f"{app}.send", task,
                             "wait" if wait else "nowait"], cwd=site.site_dir, env=env,
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("app", sorted(STYLES))
def test_the_apps_own_senders_reach_the_routed_pools(app: str, app_venv: Path,
                                                     tmp_path: Path) -> None:
    import json

    with fresh_vhost() as vhost:
        base = tmp_path / "apps"
        _write_app(base, app)
        site = make_demo_site(tmp_path, vhost, app_venv, {
            "app": f"{app}.celery", "app_settings": {"style": STYLES[app][0]},
            "working_directory": str(tmp_path / "demo"),
            "environment": {"DJANGO_SETTINGS_MODULE": f"{app}.settings",
                            f"{app.upper()}_LOCAL_SETTINGS": str(tmp_path / "demo" /
                                                                 "local_settings.py"),
                            "APP_OWN_BROKER": "amqp://nobody@127.0.0.1:1//"},
            "routes": {f"{app}.tasks.email_*": "demo-slow"}, "default_queue": "demo-quick",
            "beat": {"enabled": False}})
        for path in base.iterdir():
            path.rename(site.site_dir / path.name)

        unwired = run_crate_deploy("check", "--foreground", str(site.out), timeout=180)
        assert unwired.returncode == 1, unwired.stdout + unwired.stderr
        assert f"error: task: {app}.tasks.add goes to queue 'celery'" in unwired.stdout
        assert f"{app}.tasks.email_receipt goes to queue 'celery'" in unwired.stdout

        with Launch(site):
            _send(site, app, "add", wait=False)  # lands on `celery`: nobody consumes it
            status = run_crate_deploy("status", str(site.out))
            assert status.returncode == 1, status.stdout
            assert "STRANDED celery: 1 message(s)" in status.stdout

            (site.site_dir / "local_settings.py").write_text(
                "from crate_deploy_producer import *  # noqa\n")
            wired = run_crate_deploy("check", "--foreground", str(site.out), timeout=180)
            assert wired.returncode == 0, wired.stdout + wired.stderr
            assert "2 task(s) go to queues a pool consumes" in wired.stdout

            added = json.loads(_send(site, app, "add", wait=True))
            assert added == {"sum": 5, "node": node("quick")}
            emailed = json.loads(_send(site, app, "email_receipt", wait=True))
            assert emailed == {"node": node("slow")}

            listed = run_crate_deploy("requeue", "--stranded", "celery", "--dry-run", "-C",
                                      str(site.out))
            assert listed.returncode == 0, listed.stdout + listed.stderr
            assert f"  {app}.tasks.add -> demo-quick" in listed.stdout
            assert "would move 1 message(s) in all" in listed.stdout
            moved = run_crate_deploy("requeue", "--stranded", "celery", "-C", str(site.out))
            assert moved.returncode == 0, moved.stdout + moved.stderr
            assert "celery: moved 1 message(s) (1 -> demo-quick)" in moved.stdout
            wait_for(lambda: run_crate_deploy("status", str(site.out)).returncode == 0, 60,
                     what="status to pass once the stranded task has run",
                     describe=lambda: run_crate_deploy("status", str(site.out)).stdout)


def test_launch_runs_the_cheap_checks_first_and_starts_nothing_when_one_fails(
        latest_venv: Path, tmp_path: Path) -> None:
    """Flower's port held by another program: before, launch started the fleet and Flower
    died binding it, again and again; now it refuses, naming the holder."""
    import socket

    with fresh_vhost() as vhost, socket.socket() as squatter:
        site = make_demo_site(tmp_path, vhost, latest_venv)
        squatter.bind(("127.0.0.1", site.flower_port))
        squatter.listen(1)
        result = run_crate_deploy("launch", str(site.out), "--timeout", "30", timeout=120)
        assert result.returncode == 1, result.stdout + result.stderr
        # Named by the service whose port it is (check's port finding, its one owner).
        assert (f"port: demo-flower cannot start: port {site.flower_port} on 127.0.0.1 "
                "(flower.port) is in use by pid ") in result.stderr, result.stderr
        assert not site.state_file.exists(), "launch started something"


def test_status_finds_work_stranded_on_the_apps_own_queue_once_check_has_seen_it(
        latest_venv: Path, tmp_path: Path) -> None:
    """Without the management API a passive declare needs the queue's name: demoapp sends
    to its own `not-the-rendered-queue`, which status learns from the last check."""
    with fresh_vhost() as vhost:
        site = make_demo_site(tmp_path, vhost, latest_venv)
        with Launch(site):
            send_from_demoapp(site)
            before = run_crate_deploy("status", str(site.out))
            assert "STRANDED" not in before.stdout  # it cannot know that name yet
            checked = run_crate_deploy("check", "--foreground", str(site.out), timeout=180)
            assert "demoapp.quick goes to queue 'not-the-rendered-queue'" in checked.stdout
            after = run_crate_deploy("status", str(site.out))
            assert after.returncode == 1
            assert "STRANDED not-the-rendered-queue: 1 message(s)" in after.stdout


# A sender wired to crate_deploy_producer: publishes, then its queue goes away under it
# (deleted here; in a cluster, a classic queue whose node dies: test_cluster_faults.py),
# and it publishes again on the same connection, where kombu does not declare it again.
_SEND_INTO_A_VANISHED_QUEUE = """\
import json
from celery import Celery
from kombu import Connection

app = Celery("sender", set_as_current=False)
app.config_from_object("crate_deploy_producer", namespace="CELERY")
outcome = {}
for name, queue in (("demoapp.slow", "demo-slow"), ("demoapp.unrouted", "demo-quick")):
    app.send_task(name)  # declares the queue, confirmed
    with Connection(app.conf.broker_url, password=app.conf.broker_password) as other:
        other.default_channel.queue_delete(queue)
    try:
        app.send_task(name)
        outcome[name] = "confirmed"
    except Exception as exc:
        outcome[name] = f"raised {type(exc).__name__}: {exc}"
print(json.dumps(outcome))
"""


def test_a_publish_no_queue_takes_raises_instead_of_being_confirmed(
        app_venv: Path, tmp_path: Path) -> None:
    """RabbitMQ confirms a message it routed to no live queue: before every publish was
    mandatory, both sends here were confirmed and the tasks were gone (and a classic
    queue's node killed in a cluster lost every task sent while it was down)."""
    import json

    with fresh_vhost() as vhost:
        site = make_demo_site(tmp_path, vhost, app_venv)
        result = subprocess.run(
            [str(app_venv / "bin" / "python"), "-c", _SEND_INTO_A_VANISHED_QUEUE],
            cwd=site.site_dir, capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "BROKER_PASSWORD": site.broker_password,
                 "PYTHONPATH": str(site.out)})
        assert result.returncode == 0, result.stderr[-3000:]
        outcome = json.loads(result.stdout.splitlines()[-1])
        for name in ("demoapp.slow", "demoapp.unrouted"):  # routed, and the catch-all
            assert outcome[name].startswith("raised ") and "NO_ROUTE" in outcome[name], outcome
