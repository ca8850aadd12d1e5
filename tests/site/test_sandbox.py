"""Paths that the rendered units' sandbox hides are warned about, at their line, with the fix.

Warnings, not errors: the same rendered site also runs in the foreground, where nothing
is hidden (the end-to-end tests run their fleets from /tmp).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from crate_deploy.site.validate import validate_file
from tests.conftest import MINIMAL, Result

SITE = MINIMAL.replace("celery: /usr/bin/celery", "celery: /opt/app/bin/celery")


def warnings(path: Path) -> list[str]:
    return [str(warning).removeprefix(f"{path}:") for warning in validate_file(path).warnings]


def test_working_directory_under_home_is_reported_at_its_line_with_the_fix(
        run_cli: Callable[..., Result], write_site: Callable[..., Path]) -> None:
    path = write_site(SITE + "    working_directory: /home/alice/app\n")
    result = run_cli("validate", path)
    assert result.code == 0
    assert result.err.splitlines()[0] == (
        f"{path}:9:1: working_directory: warning: /home/alice/app is under /home, which the "
        "units hide (ProtectHome=yes), so under systemd the services cannot start in it "
        "(200/CHDIR): move it (to /srv or /opt), or set systemd.hardening: false")


@pytest.mark.parametrize(("key", "value", "hidden"), [
    ("venv", "/root/venv", "/root"),
    ("working_directory", "/run/user/1000/app", "/run/user"),
    ("working_directory", "/tmp/app", "/tmp"),
    ("working_directory", "/var/tmp/app", "/var/tmp"),
    ("paths", "{config_dir: /home/x/etc}", "/home"),
])
def test_each_hidden_place(write_site: Callable[..., Path], key: str, value: str,
                           hidden: str) -> None:
    text = SITE.replace("celery: /opt/app/bin/celery", "") if key == "venv" else SITE
    path = write_site(text + f"    {key}: {value}\n")
    found = [w for w in warnings(path) if w.split(": ")[1].split(".")[0] == key]
    assert len(found) == 1 and f" is under {hidden}, " in found[0], found


def test_state_dir_under_tmp(write_site: Callable[..., Path]) -> None:
    path = write_site(SITE + "    user: celery\n    paths: {state_dir: /tmp/state}\n"
                      "    beat: {enabled: true}\n")
    assert warnings(path) == [
        "10:9: paths.state_dir: warning: /tmp/state is under /tmp, which each service sees as "
        "its own empty directory (PrivateTmp=yes), so under systemd the services cannot keep "
        "beat's schedule and Flower's database there: move it out of /tmp"]


def test_a_state_dir_a_dynamic_user_cannot_own(write_site: Callable[..., Path]) -> None:
    path = write_site(SITE + "    paths: {state_dir: /srv/state}\n    beat: {enabled: true}\n")
    assert warnings(path) == [
        "9:9: paths.state_dir: warning: with no user: the services run as a DynamicUser= that "
        "does not own /srv/state, so beat and Flower cannot write there: remove "
        "paths.state_dir (systemd then makes /var/lib/demo for it) or set user:"]


def test_a_state_dir_nothing_uses_is_not_reported(write_site: Callable[..., Path]) -> None:
    path = write_site(SITE + "    paths: {state_dir: /srv/state}\n")
    assert warnings(path) == []


def test_dynamic_user_implies_private_tmp_even_without_hardening(
        write_site: Callable[..., Path]) -> None:
    path = write_site(SITE + "    working_directory: /tmp/app\n    systemd: {hardening: false}\n")
    assert warnings(path)[0].startswith(
        "9:1: working_directory: warning: /tmp/app is under /tmp, which each service sees as "
        "its own empty directory (PrivateTmp=, implied by DynamicUser=)")


@pytest.mark.parametrize("extra", [
    "    systemd: {hardening: false}\n    user: celery\n",
    "    systemd: {scope: user}\n",
])
def test_nothing_hidden_without_the_sandbox(write_site: Callable[..., Path], extra: str) -> None:
    path = write_site(SITE + "    working_directory: /home/alice/app\n" + extra)
    assert warnings(path) == []


def test_a_relative_path_is_checked_where_it_resolves(write_site: Callable[..., Path],
                                                       tmp_path: Path) -> None:
    path = write_site(SITE + "    working_directory: .\n")
    assert warnings(path) == [
        f"9:1: working_directory: warning: {tmp_path} is under /tmp, which each service sees "
        "as its own empty directory (PrivateTmp=yes), so under systemd the services cannot "
        "start in it (200/CHDIR): move it out of /tmp"]


def test_a_venv_whose_python_lives_under_root(write_site: Callable[..., Path],
                                              tmp_path: Path) -> None:
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
        assert warnings(path) == [
            f"3:1: venv: warning: this venv's python is {base / 'python3'}, under /root, which "
            "the units hide (ProtectHome=yes): under systemd its celery cannot start "
            "(203/EXEC); make the venv from a python outside /root (/usr/bin/python3)"]
    finally:
        (venv / "bin" / "python").unlink()
        (venv / "bin").rmdir()
        venv.rmdir()
        (base / "python3").unlink()
        base.rmdir()


def test_an_output_directory_the_sandbox_hides_is_warned_about_at_render(
        run_cli: Callable[..., Result], write_site: Callable[..., Path],
        tmp_path: Path) -> None:
    """config_dir defaults to the output directory, which the site does not name."""
    out = tmp_path / "out"
    result = run_cli("render", write_site(SITE), out)
    assert result.code == 0
    assert (f"warning: the output directory {out} is the units' config_dir (paths.config_dir "
            "is unset) and is under /tmp, which each service sees as its own empty directory "
            "(PrivateTmp=yes), so under systemd the services cannot read their config there: "
            "render into another directory, or set paths.config_dir") in result.err.splitlines()
    named = run_cli("render", write_site(SITE + "    paths: {config_dir: /etc/demo}\n"), out)
    assert named.code == 0 and "warning" not in named.err
