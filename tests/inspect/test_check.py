"""`crate-deploy check`: one test per kind of finding, against real applications in the
application venv (Celery 5.7.0) and real files, users and sockets on this machine."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crate_deploy.inspect.preflight import path_findings, port_findings
from crate_deploy.run.guard import hold_launch_lock
from crate_deploy.state.deployment import load_deployment
from crate_deploy.state.launch import save_launch_state
from tests.conftest import Result
from tests.integration.conftest import APP_VENVS

VENV = APP_VENVS["celery57"]

APP = """\
from celery import Celery
app = Celery("shop")
app.conf.task_default_queue = "{own_queue}"
app.conf.task_routes = {{"shop.email_*": {{"queue": "mail"}}}}

@app.task(name="shop.add")
def add(x, y):
    return x + y

@app.task(name="shop.email_user")
def email_user():
    return None
"""

SITE = """\
project: shop
app: shop
venv: {venv}
working_directory: {work}
secrets_file: {secrets}
broker:
  urls: ["{broker}"]
queues: [{{name: main}}, {{name: mail}}]
default_queue: main
routes:
  shop.email_*: mail
{routes}{extra}
workers:
  - name: all
    queues: [main, mail]
"""


@pytest.fixture
def shop(tmp_path: Path, run_cli: Callable[..., Result]) -> Callable[..., Path]:
    """Write the shop app and a site for it, render it; returns the render directory."""
    if not (VENV / "bin" / "python").is_file():
        pytest.skip(f"{VENV} is missing (build it with .ci/app-venvs)")

    def make(own_queue: str = "main", extra: str = "", app: str = APP,
             secrets: str = "BROKER_PASSWORD=guest\n", routes: str = "",
             broker: str = "amqp://guest:${BROKER_PASSWORD}@127.0.0.1:5672//") -> Path:
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        (work / "shop.py").write_text(app.format(own_queue=own_queue))
        (tmp_path / "secrets.env").write_text(secrets)
        (tmp_path / "secrets.env").chmod(0o600)
        site = tmp_path / "site.yaml"
        site.write_text(SITE.format(venv=VENV, work=work, secrets=tmp_path / "secrets.env",
                                    extra=textwrap.dedent(extra), routes=routes,
                                    broker=broker))
        result = run_cli("render", site, "-o", tmp_path / "out")
        assert result.code == 0, result.err
        return tmp_path / "out"

    return make


def check(run_cli: Callable[..., Result], out: Path, *args: str) -> Result:
    return run_cli("check", "--foreground", *args, out)


def test_a_consistent_app_passes(shop: Callable[..., Path],
                                 run_cli: Callable[..., Result]) -> None:
    result = check(run_cli, shop())
    assert result.code == 0, result.out
    assert "ok: app: shop imports (2 task(s))" in result.out
    assert "ok: task: 2 task(s) go to queues a pool consumes" in result.out
    assert "ok: versions: celery 5.7.0, kombu 5.7.0, flower 2.2.0" in result.out
    assert "ok: secrets: BROKER_PASSWORD are set in" in result.out


def test_a_task_sent_to_a_queue_no_pool_consumes_is_an_error_with_its_fix(
        shop: Callable[..., Path], run_cli: Callable[..., Result], tmp_path: Path) -> None:
    result = check(run_cli, shop(own_queue="celery"))
    assert result.code == 1
    assert ("error: task: shop.add goes to queue 'celery' (the application's own configuration), "
            "which no pool consumes: the site sends it to 'main'; the application's task senders "
            "do not use the site's routing: wire crate_deploy_producer into them") in result.out
    assert "`crate-deploy requeue --stranded celery`" in result.out
    assert (f"or consume 'celery' as it is: declare it under queues and add it to a pool's "
            f"queues ({tmp_path}/site.yaml:") in result.out
    # the app's own route for shop.email_user agrees with the site's
    assert "ok: task: shop.email_user -> mail (the application and the site agree)" in (
        result.out)
    assert "ok: task: 1 task(s) go to queues a pool consumes" in result.out


def test_on_a_redis_broker_the_fix_does_not_offer_requeue(
        shop: Callable[..., Path], run_cli: Callable[..., Result]) -> None:
    """requeue refuses a Redis broker: check must not send the operator there."""
    result = check(run_cli, shop(own_queue="celery", broker="redis://127.0.0.1:6379/0"))
    assert result.code == 1
    assert "requeue --stranded" not in result.out, result.out
    assert ("then send again what is stranded in 'celery' (requeue works with RabbitMQ only)"
            in result.out)


def test_an_app_that_does_not_import_shows_the_errors_last_lines(
        shop: Callable[..., Path], run_cli: Callable[..., Result]) -> None:
    result = check(run_cli, shop(app="import not_installed_anywhere\n"))
    assert result.code == 1
    assert "error: app: shop does not import:" in result.out
    assert "ModuleNotFoundError: No module named 'not_installed_anywhere'" in result.out


def test_routes_that_match_no_task_and_beat_entries_naming_unregistered_tasks(
        shop: Callable[..., Path], run_cli: Callable[..., Result], tmp_path: Path) -> None:
    out = shop(routes="  shop.report_*: main\n", extra="""\
        beat:
          enabled: true
          schedule:
            - {name: nightly, task: shop.report_daily, every: 60}
    """)
    result = check(run_cli, out)
    assert result.code == 1, result.out
    assert f"warning: route: shop.report_* matches no registered task ({tmp_path}/site.yaml:" in (
        result.out)
    assert ("error: beat: nightly runs shop.report_daily, which the application does not "
            f"register ({tmp_path}/site.yaml:") in result.out


def test_a_secret_missing_from_the_secrets_file_is_named_never_shown(
        shop: Callable[..., Path], run_cli: Callable[..., Result]) -> None:
    out = shop()  # render checks the references too: the file loses the name afterwards
    (out.parent / "secrets.env").write_text("OTHER=hunter2-value\n")
    result = check(run_cli, out)
    assert result.code == 1
    assert "error: secrets: " in result.out and "lacks BROKER_PASSWORD" in result.out
    assert "hunter2-value" not in result.out + result.err


def test_rendered_versions_differing_from_the_venvs_are_a_warning(
        shop: Callable[..., Path], run_cli: Callable[..., Result]) -> None:
    result = check(run_cli, shop(extra='celery_version: "5.5.0"\n'))
    assert "warning: versions: rendered for celery 5.5.0, but the venv has 5.7.0" in result.out


def test_flower_enabled_but_not_installed(tmp_path: Path, shop: Callable[..., Path],
                                          run_cli: Callable[..., Result]) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib/python3.11/site-packages/celery-5.7.0.dist-info").mkdir(parents=True)
    site = tmp_path / "bare.yaml"
    site.write_text("project: bare\napp: bare\nvenv: venv\ncelery_version: '5.7.0'\n"
                    "broker: {urls: ['amqp://127.0.0.1//']}\n"
                    "workers: [{name: a, queues: [celery]}]\n"
                    "flower: {enabled: true, port: 1}\n")
    assert run_cli("render", site, "-o", tmp_path / "bare").code == 0
    result = check(run_cli, tmp_path / "bare")
    assert f"error: flower: flower is enabled but not installed in {venv}" in result.out


def test_paths_the_hardening_would_hide(tmp_path: Path, shop: Callable[..., Path]) -> None:
    out = shop(extra="paths: {state_dir: /var/tmp/shop-state-that-does-not-exist}\n")
    findings = [f.message for f in path_findings(load_deployment(out), sandboxed=True)]
    assert any(f"config_dir {out} is under /tmp, which the units' PrivateTmp=yes hides" in m
               for m in findings), findings
    assert any("state_dir /var/tmp/shop-state-that-does-not-exist is under /var/tmp" in m
               for m in findings), findings
    assert any("state directory /var/tmp/shop-state-that-does-not-exist does not exist" in m
               for m in findings), findings
    # A foreground launch has no sandbox: none of this applies.
    assert not [f for f in path_findings(load_deployment(out), sandboxed=False)
                if f.kind == "hardening"]


def test_a_directory_the_service_user_cannot_enter_is_said_once_by_service(
        tmp_path: Path, shop: Callable[..., Path]) -> None:
    """The working directory (and the program) are service findings, named by service;
    the path check does not say them again (one owner per check)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory only root can enter")
    group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    out = shop(extra=f"user: nobody\ngroup: {group}\nsystemd: {{hardening: false}}\n")
    locked = tmp_path / "work"
    locked.chmod(0o700)
    try:
        findings = [f for f in path_findings(load_deployment(out), sandboxed=True)
                    if f.severity == "error"]
    finally:
        locked.chmod(0o755)
    messages = [f.message for f in findings]
    # (the first directory on the way that nobody may enter: pytest's own is 0700 too)
    assert any(m.startswith(f"shop-worker-all cannot start: cannot enter the working "
                            f"directory {locked}: nobody cannot search ") and "mode 0700" in m
               for m in messages), messages
    assert not [m for m in messages if "working_directory" in m], messages
    assert {f.kind for f in findings} == {"access"}, findings


def test_a_group_that_does_not_exist_is_named(shop: Callable[..., Path]) -> None:
    """systemd refuses a unit whose Group= does not exist (216/GROUP): said before."""
    if os.geteuid() != 0:
        pytest.skip("only root switches to the units' user")
    out = shop(extra="user: nobody\ngroup: crate-no-such-group\n")
    messages = [f.message for f in path_findings(load_deployment(out), sandboxed=False)]
    assert ("shop-worker-all cannot start: group crate-no-such-group does not exist on this "
            "machine (the units' Group=; systemd would refuse them with 216/GROUP): set group: "
            "to one that does") in messages, messages


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock
    sock.close()


def test_a_port_held_by_someone_else_and_by_our_own_fleet(
        tmp_path: Path, shop: Callable[..., Path], listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    out = shop(extra=f"flower: {{enabled: true, address: 127.0.0.1, port: {port}}}\n")
    deployment = load_deployment(out)
    [finding] = port_findings(deployment)
    assert finding.severity == "error"
    # The service, the holder (its name only), the kernel's words: the one port check
    # that check, launch and launch --systemd share.
    comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    assert finding.message.startswith(
        f"shop-flower cannot start: port {port} on 127.0.0.1 (flower.port) is in use by pid "
        f"{os.getpid()} ({comm}) (OSError: [Errno 98] Address already in use)"), finding.message
    lock = hold_launch_lock(deployment)  # this process is "our" launch, and "our" Flower
    try:
        save_launch_state(deployment, {"shop-flower": os.getpid()})
        [finding] = port_findings(deployment)
    finally:
        os.close(lock)
    assert finding.severity == "ok" and "held by this site's own running Flower" in (
        finding.message)


def test_the_apps_modules_are_not_shadowed_by_crate_deploys_own(
        shop: Callable[..., Path], run_cli: Callable[..., Result], tmp_path: Path) -> None:
    """crate_deploy/inspect/ holds probe.py, status.py...: an app module of that name wins."""
    lib = tmp_path / "lib"  # on the site's PYTHONPATH, like an installed package
    lib.mkdir()
    (lib / "probe.py").write_text("MINE = 1\n")
    out = shop(app=APP + "import probe\nassert probe.MINE == 1\n",
               extra=f"environment: {{PYTHONPATH: {lib}}}\n")
    result = check(run_cli, out)
    assert result.code == 0, result.out


def test_an_app_with_a_namespace_and_a_style_without_one(
        shop: Callable[..., Path], run_cli: Callable[..., Result]) -> None:
    namespaced = APP.replace('app.conf.task_default_queue = "{own_queue}"\n', "").replace(
        'app = Celery("shop")', 'app = Celery("shop")\n'
        'app.config_from_object({{"CELERY_TASK_DEFAULT_QUEUE": "{own_queue}"}}, '
        'namespace="CELERY")')
    result = check(run_cli, shop(app=namespaced))
    assert ('warning: app: the app reads settings with namespace="CELERY", but '
            "app_settings.style is lowercase: set it to celery-namespace") in result.out
    assert result.code == 0, result.out


def test_a_port_nobody_listens_on_but_a_connection_uses_is_only_a_warning(
        shop: Callable[..., Path], listener: socket.socket) -> None:
    """An ephemeral port may be the local end of someone's connection at the moment of the
    check (the test suite's free_port() hands out such ports): not a listener to stop, and
    gone a moment later, so it must not stop a launch."""
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    port = client.getsockname()[1]
    try:
        out = shop(extra=f"flower: {{enabled: true, address: 127.0.0.1, port: {port}}}\n")
        [finding] = port_findings(load_deployment(out))
        assert finding.severity == "warning", finding.message
        assert "is the local end of a connection right now" in finding.message
    finally:
        client.close()
        server.close()


def test_a_port_held_by_the_sites_systemd_service_is_ours(
        tmp_path: Path, shop: Callable[..., Path], listener: socket.socket,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """launch --systemd on an upgrade: Flower runs under systemd and holds its port. A
    stand-in systemctl answers `show --property=MainPID --value UNITS` with this process's
    pid (no systemd is PID 1 here)."""
    from crate_deploy.inspect import preflight

    port = listener.getsockname()[1]
    out = shop(extra=f"flower: {{enabled: true, address: 127.0.0.1, port: {port}}}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho 0\necho {os.getpid()}\n")
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(preflight, "SYSTEMD_RUNNING", tmp_path)
    [finding] = port_findings(load_deployment(out))
    assert finding.severity == "ok", finding.message
    assert "held by this site's own running Flower" in finding.message
