"""`crate-deploy launch --systemd --root TMP` on the rendered demo, as a program: an
installed, enabled tree that systemd's own checker accepts, and a second launch after a
change that names exactly the unit it would restart."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import make_demo_site, run_crate_deploy
from tests.unit_checks import SYSTEM_UNITS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("systemd-analyze") is None or
                       shutil.which("systemctl") is None,
                       reason="needs systemctl and systemd-analyze"),
]

UNITS = "etc/systemd/system"
SERVICES = ["demo-worker-quick.service", "demo-worker-slow.service", "demo-beat.service",
            "demo-flower.service"]


def _verify_installed(root: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify the units as installed in root. The root gets systemd's own
    units (network-online.target ...) and a stub at each ExecStart program, which is a
    path on the target server, not in this root."""
    if not (root / "usr/lib/systemd/system").exists():
        shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    installed = [*sorted((root / UNITS).glob("demo*.service")), root / UNITS / "demo.target"]
    for unit in installed:
        for program in re.findall(r"^ExecStart=-?(\S+)", unit.read_text(), re.MULTILINE):
            stub = root / program.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                           *map(str, installed)], capture_output=True, text=True, check=False,
                          timeout=120)


def _launch(out: Path, root: Path) -> str:
    result = run_crate_deploy("launch", "--systemd", "--root", str(root), str(out),
                              timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_systemd_root_install_is_enabled_verified_and_restarts_only_what_changed(
        tmp_path: Path, latest_venv: Path) -> None:
    site = make_demo_site(tmp_path, "cd-test-offline", latest_venv)
    root = tmp_path / "root"
    root.mkdir()

    first = _launch(site.out, root)
    units = root / UNITS
    for unit in [*SERVICES, "demo.target"]:
        assert (units / unit).read_bytes() == (site.out / "systemd" / unit).read_bytes()
        assert re.search(rf"created\s+{re.escape(str(units / unit))}$", first, re.MULTILINE)
    # Enabled the way systemctl enables: the target wants every service, and boot
    # (multi-user.target) wants the target.
    wants = sorted(path.name for path in (units / "demo.target.wants").iterdir())
    assert wants == sorted(SERVICES)
    for service in SERVICES:
        link = units / "demo.target.wants" / service
        # Absolute as seen from inside the root, where the image will boot.
        assert link.is_symlink() and os.readlink(link) == f"/{UNITS}/{service}"
    assert (units / "multi-user.target.wants" / "demo.target").is_symlink()
    # The config the services read is in the root, where the units expect it.
    config = root / str(site.out.resolve()).lstrip("/")
    for name in ("crate_deploy_app.py", "crate_deploy_celeryconfig.py", "demo.env"):
        assert (config / name).read_bytes() == (site.out / name).read_bytes()
    assert "would restart: (nothing)" in first
    # Nothing was started on this machine.
    assert "nothing started" in first

    verified = _verify_installed(root)
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr == ""

    # Change one pool's concurrency: only that pool's unit changes, only it restarts.
    def more_quick(data: dict[str, Any]) -> None:
        next(w for w in data["workers"] if w["name"] == "quick")["concurrency"] = 6

    rendered = site.rerender(more_quick)
    assert re.search(r"changed\s+\S*demo-worker-quick\.service", rendered), rendered
    assert "--concurrency=6" in (site.out / "systemd/demo-worker-quick.service").read_text()
    second = _launch(site.out, root)
    assert re.search(rf"changed\s+{re.escape(str(units / 'demo-worker-quick.service'))}$",
                     second, re.MULTILINE), second
    changed = re.findall(r"^\s*(created|changed|removed)\s+(\S+)$", second, re.MULTILINE)
    # deployment.json holds the site; no service reads it, so it restarts nothing.
    config = root / str(site.out.resolve()).lstrip("/")
    assert sorted(changed) == sorted([("changed", str(config / "deployment.json")),
                                      ("changed", str(units / "demo-worker-quick.service"))])
    restart = re.search(r"^would restart: (.*)$", second, re.MULTILINE)
    assert restart is not None, second
    assert restart.group(1).split() == ["demo-worker-quick.service"]
    assert "--concurrency=6" in (units / "demo-worker-quick.service").read_text()
    assert _verify_installed(root).stderr == ""
