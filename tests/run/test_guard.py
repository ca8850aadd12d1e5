"""A forged launch state file and a swapped-in symlink never make root act elsewhere:
stop signals no pid it has not verified as ours; the state directory's chown never
follows a symbolic link. Real processes, real symlinks; no broker needed."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crate_deploy.errors import LaunchError
from crate_deploy.state.deployment import load_deployment
from crate_deploy.state.launch import launcher_pid, orphans, start_time
from crate_deploy.write import ensure_directory
from tests.conftest import MINIMAL, Result


@pytest.fixture
def out(tmp_path: Path, write_site: Callable[..., Path], run_cli: Callable[..., Result]) -> Path:
    directory = tmp_path / "out"
    assert run_cli("render", write_site(MINIMAL), "-o", directory).code == 0
    return directory


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not ours to signal."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def forge(out: Path, document: dict[str, object]) -> None:
    (out / ".crate-deploy-launch.json").write_text(json.dumps(document))


@pytest.mark.parametrize("pid", [1, 0, -1])
def test_a_forged_launcher_pid_1_0_or_minus_1_is_never_ours(out: Path, pid: int) -> None:
    # Function-level only: a stop that believed it would signal init, or everything.
    forge(out, {"launcher": pid, "launcher_started": start_time(1), "services": {"x": pid}})
    deployment = load_deployment(out)
    assert launcher_pid(deployment) is None
    assert orphans(deployment) == {}


@pytest.mark.parametrize("with_start_time", [True, False])
def test_stop_never_signals_a_forged_live_pid(out: Path, bystander: subprocess.Popen[bytes],
                                              run_cli: Callable[..., Result],
                                              with_start_time: bool) -> None:
    """Even with its real start time (anyone can read it): the bystander holds no launch
    lock, and carries no launch tag."""
    started = start_time(bystander.pid)
    forge(out, {"launcher": bystander.pid, "services": {"demo-worker-default": bystander.pid},
                **({"launcher_started": started,
                    "services_started": {"demo-worker-default": started}}
                   if with_start_time else {})})
    result = run_cli("stop", out, "--timeout", "2")
    time.sleep(0.2)
    assert bystander.poll() is None, "stop signalled a process that is not ours"
    assert result.code in (0, 1)
    assert "Traceback" not in result.err


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can chown to another user")
def test_the_state_directory_chown_never_follows_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "profile.d"
    victim.mkdir(mode=0o755)
    parent = tmp_path / "writable-by-the-service-user"
    parent.mkdir()
    (parent / "state").symlink_to(victim)
    with pytest.raises(LaunchError, match="symbolic link"):
        ensure_directory(parent / "state", mode=0o700, owner=(65534, 65534))
    info = victim.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, 0, 0o755)


def test_the_state_directory_mode_is_explicit(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        ensure_directory(tmp_path / "a" / "state", mode=0o700)
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755


def test_status_finds_beat_by_its_unit_name_not_a_substring(
        tmp_path: Path, write_site: Callable[..., Path], run_cli: Callable[..., Result]) -> None:
    """A project my-beat with a pool nightly-beat: neither is beat."""
    from crate_deploy.inspect.status import _beat_up

    site = write_site(MINIMAL.replace("project: demo", "project: my-beat").replace(
        "name: default", "name: nightly-beat") + "    beat: {enabled: true}\n")
    out = tmp_path / "beat-out"
    assert run_cli("render", site, "-o", out).code == 0
    deployment = load_deployment(out)
    running_pool: dict[str, dict[str, Any]] = {
        "my-beat-worker-nightly-beat": {"state": "running", "pid": 10},
        "my-beat-beat": {"state": "stopped", "pid": 11}}
    assert not _beat_up(deployment, running_pool)
    assert _beat_up(deployment, {**running_pool,
                                 "my-beat-beat": {"state": "running", "pid": 11}})
    assert _beat_up(deployment, {"my-beat-worker-nightly-beat.service": {"state": "inactive"},
                                 "my-beat-beat.service": {"state": "active"}})
