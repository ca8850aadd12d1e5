"""Whoever can write the output directory must not steer a render run by root: real
symbolic links, real concurrent renders, a real read-only directory, real umasks."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from crate_deploy.commands.unchanged import RENDER_RECORD_FILE
from tests.conftest import MINIMAL, ROOT, Result


def render(*args: str | Path, umask: int | None = None, user: str | None = None,
           ) -> subprocess.CompletedProcess[str]:
    """The real program, optionally under another umask or as another user."""
    prefix = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups"] if user else []
    argv = [*prefix, sys.executable, "-m", "crate_deploy", "render", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                          umask=-1 if umask is None else umask,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def rendered(tmp_path: Path, write_site: Callable[..., Path],
             run_cli: Callable[..., Result]) -> tuple[Path, Path]:
    site = write_site(MINIMAL)
    out = tmp_path / "out"
    assert run_cli("render", site, "-o", out).code == 0
    return site, out


def test_a_manifest_entry_through_a_symlinked_directory_deletes_nothing_outside(
        rendered: tuple[Path, Path], tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    site, out = rendered
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (victim / "precious.conf").write_text("keep me\n")
    (out / "evil").symlink_to(victim)
    manifest = out / ".crate-deploy-manifest.json"
    document = json.loads(manifest.read_text())
    document["files"]["evil/precious.conf"] = "0" * 64
    manifest.write_text(json.dumps(document))
    result = run_cli("render", site, "-o", out)
    assert result.code == 1
    assert f"{out / 'evil'} is a symbolic link" in result.err
    assert (victim / "precious.conf").read_text() == "keep me\n"


def test_a_symlinked_unit_directory_is_not_written_through(
        rendered: tuple[Path, Path], tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    site, out = rendered
    victim = tmp_path / "etc-systemd"
    victim.mkdir()
    (out / "systemd").rename(tmp_path / "old-units")
    (out / "systemd").symlink_to(victim)
    result = run_cli("render", site, "-o", out)
    assert result.code == 1
    assert "is a symbolic link" in result.err
    assert list(victim.iterdir()) == []


def test_check_diff_never_reads_through_a_symlink(
        rendered: tuple[Path, Path], tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    site, out = rendered
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$only-root-may-read-this:19000:0:99999:7:::\n")
    unit = out / "systemd" / "demo-worker-default.service"
    unit.unlink()
    unit.symlink_to(secret)
    result = run_cli("render", site, "-o", out, "--check", "--diff")
    assert "only-root-may-read-this" not in result.out + result.err
    assert result.code == 1
    assert f"{unit} is a symbolic link" in result.err


def _pools_site(folder: Path, name: str, concurrency: int, pools: int) -> Path:
    workers = "".join(f"      - name: p{index}\n        queues: [celery]\n"
                      f"        concurrency: {concurrency}\n" for index in range(pools))
    text = textwrap.dedent(MINIMAL).split("workers:")[0] + "workers:\n" + textwrap.dedent(
        workers.replace("      - ", "  - ").replace("        ", "    "))
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.slow  # 20 pairs of real renders: about two minutes on a busy machine
def test_concurrent_renders_into_one_directory_never_mix_two_sites(tmp_path: Path) -> None:
    """Two sites of 200 pools rendered at once into one directory, 20 times: both
    succeed, and the directory always holds one site whole (units, config and
    deployment.json agree). Without the lock, some trials mixed or failed."""
    sites = [_pools_site(tmp_path, "a.yaml", 3, 200), _pools_site(tmp_path, "b.yaml", 5, 200)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for trial in range(20):
        out = tmp_path / f"out{trial}"
        procs = [subprocess.Popen([sys.executable, "-m", "crate_deploy", "render", str(site),
                                   "-o", str(out)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for site in sites]
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        units = {path.read_text().count("--concurrency=3") for path in
                 (out / "systemd").glob("demo-worker-*.service")}
        concurrency = json.loads((out / "deployment.json").read_text())["site"]["workers"][0][
            "concurrency"]
        assert units == ({1} if concurrency == 3 else {0}), f"trial {trial}: a mix"
        manifest = json.loads((out / ".crate-deploy-manifest.json").read_text())["files"]
        assert len(manifest) == len([p for p in out.rglob("*") if p.is_file()
                                     and not p.name.startswith(".")])


@pytest.mark.parametrize("umask", [0o077, 0o000])
def test_modes_do_not_depend_on_the_umask(tmp_path: Path, write_site: Callable[..., Path],
                                          umask: int) -> None:
    site = write_site(MINIMAL)
    out = tmp_path / "deep" / "out"
    result = render(site, "-o", out, umask=umask)
    assert result.returncode == 0, result.stderr
    for path in [tmp_path / "deep", out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        # The render record (for the fast path) is the renderer's alone, whatever the umask.
        wanted = 0o755 if path.is_dir() else 0o600 if path.name == RENDER_RECORD_FILE else 0o644
        assert mode == wanted, f"{path}: {mode:04o}"
    assert (out / RENDER_RECORD_FILE).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to render as another user")
def test_a_read_only_directory_fails_before_any_created_line() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as name:  # pytest's tmp is root-only
        folder = Path(name)
        folder.chmod(0o755)
        site = folder / "site.yaml"
        site.write_text(textwrap.dedent(MINIMAL))
        site.chmod(0o644)
        out = folder / "out"
        out.mkdir(mode=0o755)  # root's: nobody cannot write it
        result = render(site, "-o", out, user="nobody")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "created" not in result.stdout
        assert f"cannot write into {out}" in result.stderr
        assert list(out.iterdir()) == []
