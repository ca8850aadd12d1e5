"""compat.py: features newer than the target's Celery are refused or left out, and said so."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from crate_deploy.target.versions import TargetVersions
from tests.conftest import EXAMPLES, MINIMAL, Result

NEW_FEATURES = MINIMAL.replace("queues: [celery]\n", (
    "queues: [celery]\n"
    "        soft_shutdown_timeout: 30\n"
    "        detect_quorum_queues: true\n"
    "        disable_prefetch: true\n")) + (
    "    default_queue_type: quorum\n"
    "    flower: {enabled: true, read_only: true}\n")


def test_explicit_new_features_are_refused_for_celery_5_2(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    site = write_site(NEW_FEATURES + "    celery_version: '5.2.7'\n    flower_version: '2.0.1'\n")
    result = run_cli("render", site, "-o", tmp_path / "out")
    assert result.code == 2
    lines = [line.removeprefix(f"{site}:") for line in result.err.splitlines()]
    assert lines == [
        "9:5: workers[0].soft_shutdown_timeout: needs Celery 5.5 or later, but the target has "
        "5.2.7 (site); remove it or upgrade the application's Celery",
        "10:5: workers[0].detect_quorum_queues: needs Celery 5.5 or later, but the target has "
        "5.2.7 (site); remove it or upgrade the application's Celery",
        "11:5: workers[0].disable_prefetch: needs Celery 5.6 or later, but the target has "
        "5.2.7 (site); remove it or upgrade the application's Celery",
        "12:1: default_queue_type: needs Celery 5.5 or later, but the target has 5.2.7 (site); "
        "remove it or upgrade the application's Celery",
        "13:25: flower.read_only: needs Flower 2.1 or later, but the target has 2.0.1 (site); "
        "remove it or upgrade the application's Flower",
        "5 error(s): nothing was written",
    ]
    assert not (tmp_path / "out").exists()


def test_new_features_render_for_the_newest_celery(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    site = write_site(NEW_FEATURES + "    celery_version: '5.7.0'\n    flower_version: '2.2.0'\n")
    result = run_cli("render", site, "-o", tmp_path / "out")
    assert result.code == 0, result.err
    config = (tmp_path / "out/crate_deploy_celeryconfig.py").read_text()
    assert "'worker_soft_shutdown_timeout': 30.0" in config
    assert "task_default_queue_type = 'quorum'" in config
    unit = (tmp_path / "out/systemd/demo-worker-default.service").read_text()
    assert "--disable-prefetch" in unit
    assert "read_only = True" in (tmp_path / "out/flowerconfig.py").read_text()


def test_defaults_the_target_lacks_are_left_out_and_said_once(
        run_cli: Callable[..., Result], tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text((EXAMPLES / "site.yaml").read_text())  # states celery_version 5.2.7
    result = run_cli("render", site, "-o", tmp_path / "out")
    assert result.code == 0, result.err
    assert result.err.count("note: left out broker_connection_retry_on_startup: Celery 5.2.7 "
                            "does not know it (added in 5.3)") == 1
    config = (tmp_path / "out/crate_deploy_celeryconfig.py").read_text()
    assert "broker_connection_retry_on_startup" not in config


def test_probed_versions_are_cached_in_the_output(tmp_path: Path) -> None:
    from crate_deploy.target.probe import _cached

    assert _cached(tmp_path, "stamp") is None
    (tmp_path / "deployment.json").write_text(
        '{"versions": {"celery": "5.2.7", "kombu": "5.3.7", "flower": "2.0.1", '
        '"source": "probed", "stamp": "stamp"}}')
    assert _cached(tmp_path, "stamp") == TargetVersions("5.2.7", "5.3.7", "2.0.1", "probed")
    assert _cached(tmp_path, "other") is None


def test_installing_flower_in_the_venv_invalidates_the_cached_probe(tmp_path: Path) -> None:
    """`pip install flower` adds site-packages entries but changes nothing in bin/."""
    from crate_deploy.target.stamp import stamp

    def _stamp(path: Path) -> str:
        return stamp(str(path))

    celery = tmp_path / "venv/bin/celery"
    packages = tmp_path / "venv/lib/python3.11/site-packages"
    packages.mkdir(parents=True)
    celery.parent.mkdir(parents=True)
    celery.write_text("#!/usr/bin/python3\n")
    (packages / "celery-5.2.7.dist-info").mkdir()
    before = _stamp(celery)
    assert _stamp(celery) == before
    bin_mtime = celery.parent.stat().st_mtime_ns
    (packages / "flower").mkdir()
    (packages / "flower-2.0.1.dist-info").mkdir()
    assert celery.parent.stat().st_mtime_ns == bin_mtime
    assert _stamp(celery) != before


def test_unknown_flower_version_asks_for_it(run_cli: Callable[..., Result],
                                            write_site: Callable[..., Path],
                                            tmp_path: Path) -> None:
    site = write_site(MINIMAL + "    flower: {enabled: true, read_only: true}\n"
                                "    celery_version: '5.7.0'\n")
    result = run_cli("validate", site)
    assert result.code == 2
    assert result.err.splitlines()[0] == (
        f"{site}:9:25: flower.read_only: needs Flower 2.1 or later, and the target's Flower "
        "version is unknown: set flower_version in the site file, or remove this")


def test_quorum_queues_need_celery_5_5(run_cli: Callable[..., Result],
                                       write_site: Callable[..., Path]) -> None:
    """Before 5.5 workers ask for global QoS, which RabbitMQ refuses on quorum queues."""
    site = write_site(MINIMAL + "    queues: [{name: celery, type: quorum}]\n"
                                "    celery_version: '5.4.0'\n")
    result = run_cli("validate", site)
    assert result.code == 2
    assert result.err.splitlines()[0] == (
        f"{site}:9:25: queues[0].type: needs Celery 5.5 or later, but the target has 5.4.0 "
        "(site); remove it or upgrade the application's Celery")


TWO_BROKERS = MINIMAL.replace('urls: ["amqp://127.0.0.1:5672//"]',
                              'urls: ["amqp://127.0.0.1:5672//", "amqp://127.0.0.2:5672//"]')


def test_celery_5_2_on_several_brokers_is_told_to_restart_always(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    """5.2.7 workers exit 0 after an unrecoverable error (a classic queue's node down, in
    tests/integration/test_cluster_faults.py): on-failure would leave them down."""
    warned = run_cli("validate", write_site(TWO_BROKERS + "    celery_version: '5.2.7'\n"))
    assert warned.code == 0
    assert "systemd.restart: warning: Celery 5.2.7 workers exit with status 0" in warned.err
    for quiet in (TWO_BROKERS + "    celery_version: '5.3.0'\n",
                  MINIMAL + "    celery_version: '5.2.7'\n",
                  TWO_BROKERS + "    celery_version: '5.2.7'\n    systemd: {restart: always}\n"):
        result = run_cli("validate", write_site(quiet))
        assert result.code == 0 and "warning" not in result.err, result.err


def test_render_all_hosts_stamps_the_probed_venv_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stamp (a walk of the venv's site-packages) identifies the probed venv once per
    render, however many host shares it writes; each share records it, so the next render
    reuses the probe."""
    from crate_deploy import facts
    from crate_deploy.commands.render import render_command
    from crate_deploy.target import probe

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/celery").write_text("#!/usr/bin/python3\n")
    packages = venv / "lib/python3.11/site-packages"
    for name in ("celery-5.2.7", "kombu-5.3.7", "flower-2.0.1"):
        (packages / f"{name}.dist-info").mkdir(parents=True)
    site = tmp_path / "site.yaml"
    site.write_text((EXAMPLES / "multi-host.yaml").read_text().replace(
        "venv: /srv/crate/venv", f"venv: {venv}").replace(
        'celery_version: "5.2.7"', "").replace('flower_version: "2.0.1"', ""))
    probed: list[Path] = []
    stamps: list[Path] = []

    def fake_probe(executable: Path) -> TargetVersions:  # the venv's python is a stand-in
        probed.append(executable)
        return TargetVersions("5.2.7", "5.3.7", "2.0.1", "probed")

    real_stamp = facts.venv_stamp

    def counted_stamp(executable: str) -> str:
        stamps.append(Path(executable))
        return real_stamp(executable)

    monkeypatch.setattr(probe, "probe", fake_probe)
    monkeypatch.setattr(facts, "venv_stamp", counted_stamp)
    out = tmp_path / "out"
    assert render_command(site, out, check=False, show_diff=False, all_hosts=True) == 0
    shares = sorted(path.parent.name for path in out.glob("hosts/*/deployment.json"))
    assert len(shares) == 3, shares
    assert (len(probed), len(stamps)) == (1, 1)
    recorded = {json.loads((out / "hosts" / share / "deployment.json").read_text())
                ["versions"]["stamp"] for share in shares}
    assert recorded == {real_stamp(str(venv / "bin/celery"))}
    # The next render of a share finds its probe cached under that stamp.
    stamps.clear()
    assert render_command(site, out / "hosts" / shares[0], check=False, show_diff=False,
                          host=shares[0]) == 0
    assert (len(probed), len(stamps)) == (1, 1)
