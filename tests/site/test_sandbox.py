"""Paths that the rendered units' sandbox hides are refused (or warned about) with the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from crate_deploy.site.validate import validate_file
from tests.conftest import MINIMAL, Result
from tests.test_validate import messages

SITE = MINIMAL.replace("celery: /usr/bin/celery", "celery: /opt/app/bin/celery")


def test_working_directory_under_home_is_an_error_with_the_fix(
        run_cli: Callable[..., Result], write_site: Callable[..., Path]) -> None:
    path = write_site(SITE + "    working_directory: /home/alice/app\n")
    result = run_cli("validate", path)
    assert result.code == 2
    assert result.err.splitlines()[0] == (
        f"{path}:9:1: working_directory: /home/alice/app is under /home, which the units hide "
        "(ProtectHome=yes), so under systemd the services cannot start in it (200/CHDIR): "
        "move it (to /srv or /opt), or set systemd.hardening: false")


@pytest.mark.parametrize(("key", "value", "hidden"), [
    ("venv", "/root/venv", "/root"),
    ("working_directory", "/run/user/1000/app", "/run/user"),
    ("working_directory", "/tmp/app", "/tmp"),
    ("working_directory", "/var/tmp/app", "/var/tmp"),
])
def test_each_hidden_place(write_site: Callable[..., Path], key: str, value: str,
                           hidden: str) -> None:
    text = SITE.replace("celery: /opt/app/bin/celery", "") if key == "venv" else SITE
    path = write_site(text + f"    {key}: {value}\n")
    found = [m for m in messages(path) if m.split(": ")[1] == key]
    assert len(found) == 1 and f"{value} is under {hidden}" in found[0], found


def test_state_dir_under_tmp(write_site: Callable[..., Path]) -> None:
    path = write_site(SITE + "    user: celery\n    paths: {state_dir: /tmp/state}\n"
                      "    beat: {enabled: true}\n")
    assert messages(path) == [
        "10:9: paths.state_dir: /tmp/state is under /tmp, which each service sees as its own "
        "empty directory (PrivateTmp=yes), so under systemd the services cannot keep beat's "
        "schedule and Flower's database there: move it out of /tmp"]


def test_a_state_dir_a_dynamic_user_cannot_own(write_site: Callable[..., Path]) -> None:
    path = write_site(SITE + "    paths: {state_dir: /srv/state}\n    beat: {enabled: true}\n")
    assert messages(path) == [
        "9:9: paths.state_dir: with no user: the services run as a DynamicUser= that does not "
        "own /srv/state, so beat and Flower cannot write there: remove paths.state_dir "
        "(systemd then makes /var/lib/demo for it) or set user:"]


def test_dynamic_user_implies_private_tmp_even_without_hardening(
        write_site: Callable[..., Path]) -> None:
    path = write_site(SITE + "    working_directory: /tmp/app\n    systemd: {hardening: false}\n")
    assert messages(path)[0].startswith(
        "9:1: working_directory: /tmp/app is under /tmp, which each service sees as its own "
        "empty directory (PrivateTmp=, implied by DynamicUser=)")


@pytest.mark.parametrize("extra", [
    "    systemd: {hardening: false}\n    user: celery\n",
    "    systemd: {scope: user}\n",
])
def test_nothing_hidden_without_the_sandbox(write_site: Callable[..., Path], extra: str) -> None:
    path = write_site(SITE + "    working_directory: /home/alice/app\n" + extra)
    assert validate_file(path).warnings == []


def test_a_relative_path_is_a_warning(write_site: Callable[..., Path], tmp_path: Path) -> None:
    """Relative paths follow the site file (a checkout under /tmp here): a foreground
    launch runs them, so only `launch --systemd` is warned about."""
    path = write_site(SITE + "    working_directory: .\n")
    warnings = [str(w) for w in validate_file(path).warnings]
    assert warnings == [
        f"{path}:9:1: working_directory: warning: {tmp_path} is under /tmp, which each service "
        "sees as its own empty directory (PrivateTmp=yes), so under systemd the services "
        "cannot start in it (200/CHDIR): move it out of /tmp"]


def test_a_venv_whose_python_lives_under_root_is_a_warning(
        write_site: Callable[..., Path], tmp_path: Path) -> None:
    venv = Path("/srv") / f"crate-deploy-test-{tmp_path.name}"
    base = Path("/root") / f".crate-deploy-test-{tmp_path.name}"
    try:
        (venv / "bin").mkdir(parents=True)
        base.mkdir()
        (base / "python3").write_text("")
        (venv / "bin" / "python").symlink_to(base / "python3")
    except PermissionError:
        pytest.skip("needs to write under /srv and /root")
    try:
        path = write_site(SITE.replace("celery: /opt/app/bin/celery", f"venv: {venv}"))
        assert [str(w).split(": ", 1)[1] for w in validate_file(path).warnings] == [
            f"venv: warning: this venv's python is {base / 'python3'}, under /root, which the "
            "units hide (ProtectHome=yes): under systemd its celery cannot start (203/EXEC); "
            "make the venv from a python outside /root (/usr/bin/python3)"]
    finally:
        (venv / "bin" / "python").unlink()
        (venv / "bin").rmdir()
        venv.rmdir()
        (base / "python3").unlink()
        base.rmdir()
