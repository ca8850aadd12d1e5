"""launch --systemd (install.py): install into a root, enable offline, restart like handlers.

Everything here runs offline: with --root, systemctl only makes symlinks in the tree;
without it, only on a host where no systemd manager runs (this one), in a user scope
whose home is a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from crate_deploy.errors import LaunchError, UsageError
from crate_deploy.render import render_site
from crate_deploy.run import control, install, unit_watch
from crate_deploy.run.failure import Failure
from crate_deploy.run.install import INSTALL_MANIFEST, install_command
from crate_deploy.run.launch import stop_command
from crate_deploy.site.validate import validate_file
from crate_deploy.state.deployment import load_deployment
from crate_deploy.target.versions import NEWEST_KNOWN
from crate_deploy.write import apply_changes, plan_changes
from tests.conftest import EXAMPLES
from tests.unit_checks import verify_units

CRATE_SERVICES = ["crate-worker-consent.service", "crate-worker-maintenance.service",
                  "crate-beat.service", "crate-flower.service"]
CRATE_CONFIG = Path("etc/crate-deploy/crate")
UNITS = Path("etc/systemd/system")
STATUSES = ("created", "changed", "unchanged", "removed")


def render(site_path: Path, out: Path) -> Path:
    """What `crate-deploy render SITE -o OUT` writes, for the newest known Celery."""
    site = validate_file(site_path).site
    config_dir = site.paths.config_dir or str(out.resolve())
    files = render_site(site, str(site_path), config_dir, NEWEST_KNOWN).files
    apply_changes(out, plan_changes(out, files))
    return out


def launch(out: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = install_command(out, user=False, root=root)
    captured = capsys.readouterr()
    assert captured.err == ""
    return code, captured.out


def statuses(output: str) -> dict[str, str]:
    """File name -> what the launch did to it."""
    found = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in STATUSES:
            found[Path(parts[1]).name] = parts[0]
    return found


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture
def crate_site(tmp_path: Path) -> Path:
    """A copy of CRATE's site file, to edit between renders (rendered from the same path)."""
    site = tmp_path / "site.yaml"
    shutil.copy(EXAMPLES / "site.yaml", site)
    return site


def verify(rendered_units: Path, root: Path) -> str:
    """systemd-analyze verify in the root (ExecStart programs stubbed); returns its stderr.

    verify_units copies the rendered units over the installed ones: the same bytes
    (asserted by the callers), so what it checks is what was installed.
    """
    result = verify_units(rendered_units, root)
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def test_crate_example_is_installed_enabled_and_verified(
        tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = render(EXAMPLES / "site.yaml", tmp_path / "out")
    code, output = launch(out, root, capsys)
    assert code == 0
    units = ["crate.target", *CRATE_SERVICES]
    config = ["crate_deploy_app.py", "crate_deploy_celeryconfig.py", "crate_deploy_producer.py",
              "flowerconfig.py", "crate.env", "deployment.json"]
    assert statuses(output) == dict.fromkeys(units + config, "created")
    for unit in units:
        assert (root / UNITS / unit).read_bytes() == (out / "systemd" / unit).read_bytes()
    for name in config:
        assert (root / CRATE_CONFIG / name).read_bytes() == (out / name).read_bytes()
    assert (root / CRATE_CONFIG / INSTALL_MANIFEST).is_file()
    # The symlinks are systemctl's own, made offline in the root.
    wants = root / UNITS / "multi-user.target.wants/crate.target"
    assert wants.readlink() == Path("/etc/systemd/system/crate.target")
    enabled = sorted(p.name for p in (root / UNITS / "crate.target.wants").iterdir())
    assert enabled == sorted(CRATE_SERVICES)
    assert "would restart: (nothing)" in output
    assert output.splitlines()[-1].startswith("11 file(s) changed, 0 unchanged; 5 unit(s) "
                                              f"enabled in {root / UNITS}")
    assert verify(out / "systemd", root) == ""


def test_demo_example_config_goes_into_the_root_too(
        tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """config_dir defaults to the render directory; an image needs its own copy of it."""
    out = render(EXAMPLES / "demo/site.yaml", tmp_path / "out")
    assert launch(out, root, capsys)[0] == 0
    copied = root / str(out.resolve()).lstrip("/")
    assert (copied / "crate_deploy_celeryconfig.py").read_bytes() == (
        out / "crate_deploy_celeryconfig.py").read_bytes()
    assert (root / UNITS / "demo.target.wants/demo-worker-slow.service").is_symlink()
    assert not (out / INSTALL_MANIFEST).exists()  # the render directory is left as it was
    for unit in (out / "systemd").iterdir():
        assert (root / UNITS / unit.name).read_bytes() == unit.read_bytes()
    assert verify(out / "systemd", root) == ""


def test_second_launch_changes_nothing(
        tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = render(EXAMPLES / "site.yaml", tmp_path / "out")
    launch(out, root, capsys)
    before = snapshot(root)
    code, output = launch(out, root, capsys)
    assert code == 0
    assert set(statuses(output).values()) == {"unchanged"}
    assert len(statuses(output)) == 11
    assert "would restart: (nothing)" in output
    assert snapshot(root) == before  # same bytes and mtimes, manifest included


def test_changed_pool_restarts_only_its_worker(
        tmp_path: Path, crate_site: Path, root: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = render(crate_site, tmp_path / "out")
    launch(out, root, capsys)
    crate_site.write_text(crate_site.read_text().replace("concurrency: 4", "concurrency: 8"))
    render(crate_site, out)
    code, output = launch(out, root, capsys)
    assert code == 0
    changed = {name for name, status in statuses(output).items() if status != "unchanged"}
    assert changed == {"crate-worker-consent.service", "deployment.json"}
    assert "would restart: crate-worker-consent.service\n" in output


def test_shared_config_change_restarts_every_service(
        tmp_path: Path, crate_site: Path, root: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = render(crate_site, tmp_path / "out")
    launch(out, root, capsys)
    crate_site.write_text(crate_site.read_text().replace("expires: 86400", "expires: 3600"))
    render(crate_site, out)
    _, output = launch(out, root, capsys)
    assert statuses(output)["crate_deploy_celeryconfig.py"] == "changed"
    assert {name for name, status in statuses(output).items() if name.endswith(".service")
            and status == "changed"} == set()
    assert f"would restart: {' '.join(CRATE_SERVICES)}\n" in output


def test_flower_config_change_restarts_only_flower(
        tmp_path: Path, crate_site: Path, root: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = render(crate_site, tmp_path / "out")
    launch(out, root, capsys)
    crate_site.write_text(crate_site.read_text().replace("max_tasks: 10000", "max_tasks: 500"))
    render(crate_site, out)
    _, output = launch(out, root, capsys)
    assert statuses(output)["flowerconfig.py"] == "changed"
    assert "would restart: crate-flower.service\n" in output


def test_pool_no_longer_rendered_is_removed_and_disabled(
        tmp_path: Path, crate_site: Path, root: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    original = crate_site.read_text()
    crate_site.write_text(original.replace(
        "workers:\n", "workers:\n  - name: extra\n    queues: [email]\n"))
    out = render(crate_site, tmp_path / "out")
    launch(out, root, capsys)
    assert (root / UNITS / "crate.target.wants/crate-worker-extra.service").is_symlink()
    crate_site.write_text(original)
    render(crate_site, out)
    code, output = launch(out, root, capsys)
    assert code == 0
    assert statuses(output)["crate-worker-extra.service"] == "removed"
    assert not (root / UNITS / "crate-worker-extra.service").exists()
    assert not (root / UNITS / "crate.target.wants/crate-worker-extra.service").is_symlink()
    assert (root / UNITS / "crate.target.wants/crate-worker-consent.service").is_symlink()


def test_foreign_file_at_a_unit_path_is_refused_and_left_alone(
        tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = render(EXAMPLES / "site.yaml", tmp_path / "out")
    mine = root / UNITS / "crate-beat.service"
    mine.parent.mkdir(parents=True)
    mine.write_text("# my own beat\n")
    with pytest.raises(LaunchError, match=r"crate-beat\.service exists and was not "
                                          "installed by crate-deploy"):
        install_command(out, user=False, root=root)
    assert mine.read_text() == "# my own beat\n"
    # Refused before anything was written or enabled.
    assert [p.relative_to(root) for p in sorted(root.rglob("*")) if not p.is_dir()] == [
        UNITS / "crate-beat.service"]


def test_no_rendered_site(tmp_path: Path, root: Path) -> None:
    with pytest.raises(UsageError, match=r"no rendered site in .*: run `crate-deploy render "):
        install_command(tmp_path, user=False, root=root)


def test_scope_must_match_the_rendered_site(tmp_path: Path, root: Path) -> None:
    out = render(EXAMPLES / "site.yaml", tmp_path / "out")
    with pytest.raises(UsageError, match="rendered for the system manager"):
        install_command(out, user=True, root=None)
    with pytest.raises(UsageError, match="--user cannot be combined with --root"):
        install_command(render(user_site(tmp_path), tmp_path / "user"), user=True, root=root)


def user_site(tmp_path: Path) -> Path:
    """The demo site, run by the user's own systemd manager."""
    shutil.copytree(EXAMPLES / "demo", tmp_path / "demo")
    site = tmp_path / "demo/site.yaml"
    # The venv this test runs in: launch checks that the services' program runs.
    text = site.read_text().replace("venv: ../../.venv", f"venv: {sys.prefix}")
    site.write_text(text + "systemd:\n  scope: user\n")
    return site


@pytest.mark.skipif(Path("/run/systemd/system").exists(),
                    reason="a systemd manager runs here: this would start the demo fleet")
def test_without_a_manager_units_are_installed_and_the_start_step_says_why_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A Dockerfile step: install and enable now, start when the image boots systemd."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    site = user_site(tmp_path)
    out = render(site, tmp_path / "out")
    assert install_command(out, user=True, root=None) == 1
    captured = capsys.readouterr()
    unit_dir = home / ".config/systemd/user"
    assert captured.err.startswith("crate-deploy: systemd is not running here (PID 1 is ")
    assert (f"installed and enabled 5 units under {unit_dir}; start them with "
            "`systemctl --user start demo.target` on a systemd host") in captured.err
    assert statuses(captured.out)["demo-worker-quick.service"] == "created"
    assert (unit_dir / "default.target.wants/demo.target").is_symlink()
    assert (unit_dir / "demo.target.wants/demo-beat.service").is_symlink()

    # config_dir is the render directory: nothing copied, but the next launch still
    # knows the Celery config changed since this one.
    site.write_text(site.read_text().replace("concurrency: 2", "concurrency: 3") +
                    "results:\n  expires: 60\n")
    render(site, out)
    assert install_command(out, user=True, root=None) == 1
    output = capsys.readouterr().out
    assert statuses(output)["demo-worker-slow.service"] == "changed"
    assert ("would restart: demo-worker-quick.service demo-worker-slow.service "
            "demo-beat.service demo-flower.service\n") in output


def fake_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    """A stand-in systemctl first in PATH, on a host said to run systemd: it logs its
    arguments (to the file returned), then runs script (sh)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n{script}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(install, "BOOTED_MARKER", tmp_path)  # "systemd is PID 1"
    return log


def test_with_a_manager_only_changed_services_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The live sequence, against a stand-in systemctl that logs what it is asked to do.

    (The real one cannot be used: no manager runs here, and tests never start services.)
    """
    log = fake_systemctl(tmp_path, monkeypatch, "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    site = user_site(tmp_path)
    out = render(site, tmp_path / "out")
    services = "demo-worker-quick.service demo-worker-slow.service " \
               "demo-beat.service demo-flower.service"
    units = f"demo.target {services}"
    # What is running before anything starts: only what this launch starts is stopped
    # again on a certain failure.
    properties = " ".join(f"--property={name}" for name in unit_watch._PROPERTIES)
    running = f"--user show {properties} {services}"

    def launch_live() -> list[str]:
        log.unlink(missing_ok=True)
        # wait=False: the fake systemctl starts nothing that could answer a ping.
        assert install_command(out, user=True, root=None, wait=False) == 0
        return log.read_text().splitlines()

    assert launch_live() == ["--user show --property=Version", "--user daemon-reload",
                             f"--user --quiet enable {units}",
                             f"--user reset-failed {services}", running,
                             "--user start demo.target"]
    assert "restarted: (nothing)" in capsys.readouterr().out
    site.write_text(site.read_text().replace("concurrency: 2", "concurrency: 3"))
    render(site, out)
    assert launch_live() == ["--user show --property=Version", "--user daemon-reload",
                             f"--user --quiet enable {units}",
                             f"--user reset-failed {services}", running,
                             "--user try-restart demo-worker-slow.service",
                             "--user start demo.target"]
    assert "restarted: demo-worker-slow.service\n" in capsys.readouterr().out
    assert launch_live() == ["--user show --property=Version",
                             f"--user --quiet enable {units}",
                             f"--user reset-failed {services}", running,
                             "--user start demo.target"]
    site.write_text(site.read_text().replace("beat:\n  enabled: true", "beat:\n  enabled: false"))
    render(site, out)
    assert "--user --quiet disable --now demo-beat.service" in launch_live()


@pytest.mark.skipif(Path("/run/systemd/system").exists(),
                    reason="a systemd manager runs here: this would start the demo fleet")
def test_user_units_get_their_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """No StateDirectory= makes it for a user unit: without it Flower and beat fail at
    their first write (Flower: `No such file or directory: '.../state/flower.db'`)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    site = user_site(tmp_path)
    site.write_text(site.read_text().replace("paths:\n  state_dir: state ", "#"))
    out = render(site, tmp_path / "out")
    state = out / "state"  # the default, CONFIG_DIR/state
    assert load_deployment(out).state_dir == str(state.resolve())
    assert install_command(out, user=True, root=None) == 1  # no manager here
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o700
    state.chmod(0o750)  # a directory someone made keeps its mode
    assert install_command(out, user=True, root=None) == 1
    assert state.stat().st_mode & 0o777 == 0o750


def test_without_xdg_runtime_dir_the_user_manager_cannot_be_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`runuser -u` does not set XDG_RUNTIME_DIR, and systemctl --user finds the manager
    through it: the message says so, not only "log in" (the manager may well run)."""
    fake_systemctl(tmp_path, monkeypatch,
                   "echo 'Failed to connect to bus: No medium found' >&2; exit 1")
    monkeypatch.setenv("USER", "crate")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    problem = install.manager_problem(user=True)
    assert problem is not None
    assert problem.startswith("no systemd user manager answers for crate (Failed to connect "
                              "to bus: No medium found): XDG_RUNTIME_DIR is not set"), problem
    assert f"run with XDG_RUNTIME_DIR=/run/user/{os.getuid()}" in problem, problem
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert install.manager_problem(user=True) == (
        "no systemd user manager answers for crate (Failed to connect to bus: No medium "
        "found); log in, or `loginctl enable-linger crate`")


def test_a_failed_user_launch_says_to_launch_again_with_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The units a certain failure stopped are started again by `launch --systemd --user`:
    the advice says --user (without it, the relaunch is refused)."""
    out = render(user_site(tmp_path), tmp_path / "out")
    deployment = load_deployment(out)
    monkeypatch.setattr(unit_watch, "wait_until_ready", lambda *args, **kwargs: False)
    watch = unit_watch.UnitWatch.starting_now(deployment.services, user=True, ours=[],
                                              stop=lambda units: None)
    watch.stopped = list(deployment.services)
    watch.early.failure = Failure("demo-flower.service", "exited with code 1")
    assert unit_watch.wait_for_units(deployment, watch, timeout=1) == 1
    said = capsys.readouterr().out
    assert (f"fix the cause, then `crate-deploy launch --systemd --user {deployment.directory}` "
            "starts them again") in said, said


def test_stop_stops_the_target_of_a_fleet_under_systemd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`crate-deploy stop DIR` of a fleet launch --systemd started: `systemctl stop` of its
    target (it said "nothing launched from DIR is running" and left the fleet running)."""
    active = tmp_path / "active"  # what the stand-in says each unit's ActiveState is
    active.write_text("inactive")
    log = fake_systemctl(tmp_path, monkeypatch, f"""
case "$*" in
  *"--property=Id"*) for unit in "$@"; do case "$unit" in
      --*|show) ;; *) printf 'Id=%s\\nActiveState=%s\\n\\n' "$unit" "$(cat {active})" ;;
      esac; done ;;
  *" stop "*) echo inactive > {active} ;;
esac""")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    out = render(user_site(tmp_path), tmp_path / "out")
    assert stop_command(out) == 0
    assert "nothing launched from" in capsys.readouterr().out  # not installed in systemd
    assert install_command(out, user=True, root=None, wait=False) == 0
    active.write_text("active")
    log.unlink()
    assert stop_command(out, timeout=90) == 0
    said = capsys.readouterr().out
    assert "--user stop demo.target" in log.read_text().splitlines(), log.read_text()
    assert ("crate-deploy: stopping demo.target (systemctl --user stop); running tasks may "
            "take up to 90s to finish\ncrate-deploy: stopped demo.target; `systemctl --user "
            "start demo.target` starts it again\n") in said, said
    assert stop_command(out) == 0  # nothing active any more
    assert "nothing launched from" in capsys.readouterr().out
    # Between two restarts of a crash loop a unit is "activating": it is stopped too.
    active.write_text("activating")
    assert stop_command(out, timeout=90) == 0
    assert "stopped demo.target" in capsys.readouterr().out
    # A manager that cannot be asked is an error, never "nothing is running".
    monkeypatch.setattr(control, "manager_problem", lambda user: "no systemd user manager "
                        "answers for crate (Failed to connect to bus): XDG_RUNTIME_DIR is not set")
    with pytest.raises(LaunchError, match=r"cannot tell whether demo\.target runs: no "
                       r"systemd user manager answers for crate"):
        stop_command(out)
    assert "nothing launched from" not in capsys.readouterr().out
