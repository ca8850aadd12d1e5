"""No secret is shown by a launched fleet: not by `celery inspect conf`, not by any Flower
page or API answer, not in the environment of a process that does not need it.

Three ways an application configures itself (plain; Django-style `namespace="CELERY"`;
CRATE's `config_from_object(settings)` with old upper-case names and no namespace), on
Celery 5.2.7 and the newest. The broker user is one of the test's own with a
distinctive password: guest's is well known, a leak of it would go unnoticed.
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import quote

import pytest

from crate_deploy.inspect.probe import http_status
from tests.integration.conftest import (
    DemoSite,
    Launch,
    free_port,
    fresh_vhost,
    make_demo_site,
    node,
    wait_for,
)
from tests.rabbit import amqp_url, temporary_user

pytestmark = pytest.mark.slow

APPS = {
    "plain": "from celery import Celery\n\napp = Celery('plainapp')\n",
    "namespace": None,  # examples/demo/demoapp.py: config_from_object(..., namespace="CELERY")
    "no-namespace": (
        "from celery import Celery\n\n\n"
        "class Settings:  # what CRATE's Django settings hold: old names, no namespace\n"
        "    BROKER_URL = 'amqp://nobody@127.0.0.1:1//'\n"
        "    CELERY_ACKS_LATE = False\n"
        "    CELERYD_PREFETCH_MULTIPLIER = 8\n\n\n"
        "app = Celery('crateapp')\n"
        "app.config_from_object(Settings)\n"),
}
MODULES = {"plain": "plainapp", "namespace": "demoapp", "no-namespace": "crateapp"}
# Flower pages and API answers; a worker's page holds its Config tab (`inspect conf`).
# The refresh comes first: it makes Flower ask the workers (their conf included).
FLOWER_PATHS = ["api/workers?refresh=1", "", "workers", "worker/{node}", "tasks", "broker",
                "dashboard", "api/workers", "api/tasks", "api/task/types",
                "tasks/datatable?draw=1&start=0&length=10&search%5Bvalue%5D=", "metrics"]
MUST_ANSWER = {"worker/{node}", "api/workers?refresh=1"}


def forms(secret: str) -> list[str]:
    """The secret and every encoding of it a page or a log might carry."""
    return [secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode(),
            base64.b64encode(f"admin:{secret}".encode()).decode()]


def leaked(site: DemoSite, text: str) -> list[str]:
    secrets = {"BROKER_PASSWORD": site.broker_password, "FLOWER_PASSWORD": site.flower_password}
    return [name for name, value in secrets.items() if any(f in text for f in forms(value))]


@pytest.fixture(params=sorted(APPS))
def fleet(request: pytest.FixtureRequest, app_venv: Path, tmp_path: Path
          ) -> Iterator[tuple[DemoSite, Launch]]:
    style = str(request.param)
    password = f"Br0ker-{uuid.uuid4().hex[:12]}-pw"
    with fresh_vhost() as vhost, temporary_user(vhost, password) as user:
        site = make_demo_site(tmp_path, vhost, app_venv, {
            "app": MODULES[style],
            "workers": [{"name": "quick", "queues": ["demo-quick"], "concurrency": 1}],
        }, broker_password=password, broker_user=user)
        if APPS[style] is not None:
            (site.site_dir / f"{MODULES[style]}.py").write_text(str(APPS[style]))
        with Launch(site) as launch:
            yield site, launch


def _flower(site: DemoSite, path: str) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{site.flower_port}/{path}")
    token = base64.b64encode(f"{site.flower_user}:{site.flower_password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def _answers(site: DemoSite, path: str) -> bool:
    return _flower(site, path)[0] == 200


def test_no_secret_in_inspect_conf_flower_or_a_needless_environment(
        fleet: tuple[DemoSite, Launch]) -> None:
    site, launch = fleet
    # `celery inspect conf`, as anyone with the broker URL (or Flower access) sees it.
    result = subprocess.run(
        [str(site.venv / "bin" / "celery"), "-b", site.broker_url, "inspect", "conf",
         "--json", "--timeout", "10", "-d", node("quick")],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    conf = json.loads(result.stdout)[node("quick")]
    broker_keys = [key for key in conf if key.lower().endswith("broker_url")]
    assert broker_keys, conf  # the fleet's own settings are there ...
    assert leaked(site, result.stdout + result.stderr) == []  # ... and no secret
    for path in FLOWER_PATHS:
        url = path.format(node=node("quick"))
        if path in MUST_ANSWER:  # Flower may take a moment to hear of the worker
            wait_for(partial(_answers, site, url), 60, 1.0, what=f"/{url}")
        status, body = _flower(site, url)
        if path in MUST_ANSWER:
            assert status == 200, (path, status, body[:500])
            assert "task_acks_late" in body or "ACKS_LATE" in body, (path, body[:2000])
        assert leaked(site, body) == [], f"/{path} ({status}) shows a secret"
    assert leaked(site, launch.log()) == []
    # Each process holds only the secrets it needs: the pools and beat never Flower's.
    pids = launch.pids()
    for name in ("demo-worker-quick", "demo-beat"):
        environ = Path(f"/proc/{pids[name]}/environ").read_bytes().decode("utf-8", "replace")
        assert site.flower_password not in environ, f"{name} holds the Flower password"
    flower = Path(f"/proc/{pids['demo-flower']}/environ").read_bytes().decode()
    assert f"FLOWER_PASSWORD={site.flower_password}" in flower


def test_status_sees_that_a_flower_with_an_empty_password_lets_anyone_in(
        latest_venv: Path, vhost: str) -> None:
    """A Flower started (by hand, around crate-deploy's refusals) with `admin:` as its
    auth answers 401 without credentials, yet lets anyone in with an empty password:
    that is no auth, and status and launch's readiness must not call it enforced."""
    from crate_deploy.inspect.probe import flower_health
    from crate_deploy.site.model import Site

    port = free_port()
    flower = subprocess.Popen(
        [str(latest_venv / "bin" / "celery"), "-b", amqp_url(vhost), "flower",
         "--address=127.0.0.1", f"--port={port}", "--basic-auth=admin:"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        site = Site.model_validate({
            "project": "demo", "app": "demo.app", "celery": "/usr/bin/celery",
            "secrets_file": "/etc/demo/secrets.env",
            "broker": {"urls": [f"amqp://guest@127.0.0.1:5672/{vhost}"]},
            "workers": [{"name": "default", "queues": ["celery"]}],
            "flower": {"enabled": True, "port": port,
                       "auth": [{"user": "admin", "password": "${FLOWER_PASSWORD}"}]}})
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/healthcheck") == 200, 60,
                 what="Flower's health check")
        health = flower_health(site, ("admin", ""))
        assert not health.up, health
        assert "empty password" in health.detail
    finally:
        flower.terminate()
        flower.wait(30)
