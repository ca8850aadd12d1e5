"""render --check / --diff / --json: which services a change restarts, before it is rolled out."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from crate_deploy.run.install import install_command
from tests.conftest import EXAMPLES, Result

WORKERS = ["crate-worker-consent.service", "crate-worker-maintenance.service"]
SERVICES = [*WORKERS, "crate-beat.service", "crate-flower.service"]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    shutil.copy(EXAMPLES / "site.yaml", path)
    return path


def edit(site: Path, old: str, new: str) -> None:
    text = site.read_text()
    assert old in text
    site.write_text(text.replace(old, new, 1))


def check_json(run_cli: Callable[..., Result], site: Path, out: Path) -> dict[str, object]:
    result = run_cli("render", site, "-o", out, "--check", "--json")
    assert result.code == 1, result.err
    return json.loads(result.out)  # type: ignore[no-any-return]


def test_one_pools_concurrency_restarts_only_that_pool(
        run_cli: Callable[..., Result], site: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("render", site, "-o", out).code == 0
    edit(site, "concurrency: 4", "concurrency: 8")
    report = check_json(run_cli, site, out)
    assert report["services"] == {
        "restart": ["crate-worker-consent.service"], "start": [], "stop": [],
        "left_running": ["crate-worker-maintenance.service", "crate-beat.service",
                         "crate-flower.service"]}
    assert report["written"] is False
    changed = {Path(f["path"]).name for f in report["files"]  # type: ignore[attr-defined]
               if f["status"] != "unchanged"}
    assert changed == {"crate-worker-consent.service", "deployment.json"}


def test_a_broker_change_restarts_every_service(
        run_cli: Callable[..., Result], site: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_cli("render", site, "-o", out)
    edit(site, "rabbit2.internal", "rabbit3.internal")
    report = check_json(run_cli, site, out)
    assert report["services"] == {"restart": SERVICES, "start": [], "stop": [],
                                  "left_running": []}


def test_text_report_is_in_launch_terms_and_the_diff_masks_secrets(
        run_cli: Callable[..., Result], site: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_cli("render", site, "-o", out)
    edit(site, "max_tasks: 10000", "max_tasks: 500")
    edit(site, "workers:\n", "workers:\n  - name: extra\n    queues: [email]\n")
    result = run_cli("render", site, "-o", out, "--check", "--diff")
    assert result.code == 1
    assert ("once installed with `crate-deploy launch --systemd`:\n"
            f"  would restart: {' '.join(SERVICES)}\n"
            "  would start: crate-worker-extra.service\n"
            "  left running: (nothing)\n"
            "check: ") in result.out
    assert "\n+max_tasks = 500\n" in result.out


def test_removed_pool_is_reported_as_stopped(
        run_cli: Callable[..., Result], site: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    edit(site, "workers:\n", "workers:\n  - name: extra\n    queues: [email]\n")
    run_cli("render", site, "-o", out)
    shutil.copy(EXAMPLES / "site.yaml", site)
    services = check_json(run_cli, site, out)["services"]
    assert services["stop"] == ["crate-worker-extra.service"]  # type: ignore[index]
    # Each pool's overrides live in the Celery config every service reads.
    assert services["restart"] == SERVICES  # type: ignore[index]


def test_render_report_and_launch_agree(
        run_cli: Callable[..., Result], site: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """What the reviewer was shown is what launch --systemd then restarts."""
    out, root = tmp_path / "out", tmp_path / "root"
    root.mkdir()
    run_cli("render", site, "-o", out)
    assert install_command(out, user=False, root=root) == 0
    edit(site, "concurrency: 1", "concurrency: 2")
    edit(site, "max_tasks: 10000", "max_tasks: 500")
    reviewed = check_json(run_cli, site, out)["services"]
    assert run_cli("render", site, "-o", out).code == 0
    capsys.readouterr()
    install_command(out, user=False, root=root)
    launched = capsys.readouterr().out
    restart = reviewed["restart"]  # type: ignore[index]
    assert restart == ["crate-worker-maintenance.service", "crate-flower.service"]
    assert f"would restart: {' '.join(restart)}\n" in launched


def test_nothing_to_change(run_cli: Callable[..., Result], site: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_cli("render", site, "-o", out)
    result = run_cli("render", site, "-o", out, "--check", "--json")
    assert result.code == 0
    report = json.loads(result.out)
    assert report["changed"] == 0
    assert report["services"]["restart"] == []
    assert report["services"]["left_running"] == SERVICES


def test_json_without_check_renders_then_reports(
        run_cli: Callable[..., Result], site: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("render", site, "-o", out, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["written"] is True and report["changed"] == 11  # every file, created
    assert report["services"]["start"] == SERVICES  # a first render: nothing runs yet
    assert (out / "systemd/crate-worker-consent.service").is_file()
