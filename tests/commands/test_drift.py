"""crate-deploy drift: installed units and config against what the site file renders now.

Installs offline into a temporary root (launch --systemd --root), as a server would
have it, then edits by hand, changes the site, renders without launching.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from crate_deploy.run.install import install_command
from tests.conftest import EXAMPLES, Result

UNITS = Path("etc/systemd/system")
CONFIG = Path("etc/crate-deploy/crate")


@pytest.fixture
def server(tmp_path: Path, run_cli: Callable[..., Result],
           capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, Path]:
    """A site file, its render and a root it was installed into: (site, out, root)."""
    site, out, root = tmp_path / "site.yaml", tmp_path / "out", tmp_path / "root"
    shutil.copy(EXAMPLES / "site.yaml", site)
    root.mkdir()
    assert run_cli("render", site, "-o", out).code == 0
    assert install_command(out, user=False, root=root) == 0
    capsys.readouterr()
    return site, out, root


def drift(run_cli: Callable[..., Result], out: Path, root: Path, *args: str) -> Result:
    return run_cli("drift", out, "--root", root, *args)


def test_no_drift_right_after_launch(run_cli: Callable[..., Result],
                                     server: tuple[Path, Path, Path]) -> None:
    _, out, root = server
    result = drift(run_cli, out, root)
    assert result.code == 0, result.out + result.err
    assert result.out.startswith(f"no drift: {out} is what the site file renders")


def test_a_hand_edited_installed_unit_is_reported(run_cli: Callable[..., Result],
                                                  server: tuple[Path, Path, Path]) -> None:
    _, out, root = server
    unit = root / UNITS / "crate-worker-consent.service"
    unit.write_text(unit.read_text().replace("--concurrency=4", "--concurrency=16"))
    result = drift(run_cli, out, root)
    assert result.code == 1
    assert result.out.splitlines() == [
        f"drift: {unit}: edited by hand since `launch --systemd` installed it; launch again "
        "to put it back",
        f"`crate-deploy launch --systemd` from {out} would:",
        "  would restart: crate-worker-consent.service",
        "  left running: crate-worker-maintenance.service crate-beat.service "
        "crate-flower.service",
        "1 file(s) drifted"]
    report = json.loads(drift(run_cli, out, root, "--json").out)
    assert report["drift"] is True
    assert report["findings"] == [{"path": str(unit), "kind": "edited", "message": (
        "edited by hand since `launch --systemd` installed it; launch again to put it back")}]


def test_a_removed_installed_file_is_reported(run_cli: Callable[..., Result],
                                              server: tuple[Path, Path, Path]) -> None:
    _, out, root = server
    (root / CONFIG / "flowerconfig.py").unlink()
    result = drift(run_cli, out, root)
    assert result.code == 1
    assert f"drift: {root / CONFIG / 'flowerconfig.py'}: installed by `launch --systemd`, " \
           "and since removed" in result.out
    # Flower read it when it started: launch would put it back and restart nothing.
    assert "would restart" not in result.out


def test_a_site_change_not_rendered_names_the_files(
        run_cli: Callable[..., Result], server: tuple[Path, Path, Path]) -> None:
    site, out, root = server
    site.write_text(site.read_text().replace("concurrency: 1", "concurrency: 3"))
    result = drift(run_cli, out, root)
    assert result.code == 1
    drifted = [line.split(": ")[1] for line in result.out.splitlines()
               if line.startswith("drift: ")]
    assert drifted == [str(out / "deployment.json"),
                       str(out / "systemd/crate-worker-maintenance.service")]
    assert (f"differs: the site file changed since the last render; `crate-deploy render "
            f"{site} -o {out}`") in result.out


def test_a_render_not_launched_is_reported_with_what_launch_would_restart(
        run_cli: Callable[..., Result], server: tuple[Path, Path, Path]) -> None:
    site, out, root = server
    site.write_text(site.read_text().replace("expires: 86400", "expires: 3600"))
    assert run_cli("render", site, "-o", out).code == 0
    result = drift(run_cli, out, root)
    assert result.code == 1
    # The result settings are in the producers' module too (the app's senders read them).
    assert result.out.splitlines()[:3] == [
        f"drift: {root / CONFIG / 'crate_deploy_celeryconfig.py'}: differs from the render; "
        "`launch --systemd` installs the render",
        f"drift: {root / CONFIG / 'crate_deploy_producer.py'}: differs from the render; "
        "`launch --systemd` installs the render",
        f"drift: {root / CONFIG / 'deployment.json'}: differs from the render; `launch "
        "--systemd` installs the render"]
    assert ("  would restart: crate-worker-consent.service crate-worker-maintenance.service "
            "crate-beat.service crate-flower.service\n") in result.out


def test_a_hand_edited_rendered_file_is_told_apart(
        run_cli: Callable[..., Result], server: tuple[Path, Path, Path]) -> None:
    _, out, root = server
    env = out / "crate.env"
    env.write_text(env.read_text() + "EXTRA=1\n")
    result = drift(run_cli, out, root)
    assert result.code == 1
    assert (f"drift: {env}: edited by hand since crate-deploy rendered it; `crate-deploy "
            "render` puts it back") in result.out


def test_without_an_install_only_the_render_is_checked(
        run_cli: Callable[..., Result], server: tuple[Path, Path, Path],
        tmp_path: Path) -> None:
    _, out, _ = server
    empty = tmp_path / "empty-root"
    empty.mkdir()
    result = drift(run_cli, out, empty)
    assert result.code == 0
    assert "note: nothing was installed from" in result.err


def test_the_site_file_must_be_found(run_cli: Callable[..., Result],
                                     server: tuple[Path, Path, Path]) -> None:
    site, out, root = server
    site.rename(site.with_name("moved.yaml"))
    result = drift(run_cli, out, root)
    assert result.code == 2
    assert "give its path with --site" in result.err
    moved = drift(run_cli, out, root, "--site", str(site.with_name("moved.yaml")))
    assert moved.code == 0, moved.out + moved.err


@pytest.mark.skipif(Path("/run/systemd/system").exists(),
                    reason="a systemd manager runs here: launch would start the demo fleet")
def test_config_rendered_in_place_but_not_restarted(
        run_cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """config_dir is the render directory: nothing is copied, so only the hashes the last
    launch recorded say that the services run with an older Celery config."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    shutil.copytree(EXAMPLES / "demo", tmp_path / "demo")
    site, out = tmp_path / "demo/site.yaml", tmp_path / "out"
    site.write_text(site.read_text() + "systemd:\n  scope: user\n")
    assert run_cli("render", site, "-o", out).code == 0
    install_command(out, user=True, root=None)  # 1: no manager to start them; installed
    capsys.readouterr()
    assert run_cli("drift", out).code == 0
    site.write_text(site.read_text() + "results:\n  expires: 60\n")
    assert run_cli("render", site, "-o", out).code == 0
    result = run_cli("drift", out)
    assert result.code == 1
    assert result.out.splitlines() == [
        f"drift: {out}/crate_deploy_celeryconfig.py: rendered since the services were "
        "started; `launch --systemd` restarts them",
        f"drift: {out}/crate_deploy_producer.py: rendered since the services were "
        "started; `launch --systemd` restarts them",
        f"`crate-deploy launch --systemd` from {out} would:",
        "  would restart: demo-worker-quick.service demo-worker-slow.service "
        "demo-beat.service demo-flower.service",
        "  left running: (nothing)",
        "2 file(s) drifted"]


def test_a_drop_in_is_reported(run_cli: Callable[..., Result],
                               server: tuple[Path, Path, Path]) -> None:
    """`systemctl edit UNIT` leaves the unit file alone and writes a drop-in."""
    _, out, root = server
    override = root / UNITS / "crate-worker-consent.service.d/override.conf"
    override.parent.mkdir()
    override.write_text("[Service]\nEnvironment=EXTRA=1\n")
    shared = root / "run/systemd/system/crate-.service.d/50-limits.conf"
    shared.parent.mkdir(parents=True)
    shared.write_text("[Service]\nMemoryMax=1G\n")
    result = drift(run_cli, out, root)
    assert result.code == 1
    assert result.out.splitlines()[:2] == [
        f"drift: {override}: a drop-in changes crate-worker-consent.service, and the site file "
        "does not say so: move the change into the site file, or remove it (`systemctl "
        "revert crate-worker-consent.service`)",
        f"drift: {shared}: a drop-in changes crate-worker-consent.service "
        "crate-worker-maintenance.service crate-beat.service crate-flower.service, and the "
        "site file does not say so: move the change into the site file, or remove it "
        "(`systemctl revert crate-worker-consent.service`)"]
