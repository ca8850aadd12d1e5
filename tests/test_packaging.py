"""The wheel ships its templates: install it (not editable) in a fresh venv and render."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT


@pytest.mark.slow
def test_wheel_installs_and_renders(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(ROOT)], check=True)
    wheel = next(wheels.glob("crate_deploy-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True)
    out = tmp_path / "out"
    result = subprocess.run([str(venv / "bin/crate-deploy"), "render",
                             str(EXAMPLES / "site.yaml"), "-o", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert (out / "systemd/crate-worker-consent.service").is_file()
    installed = subprocess.run([str(venv / "bin/python"), "-c",
                                "import crate_deploy, pathlib; "
                                "print(pathlib.Path(crate_deploy.__file__).parent)"],
                               capture_output=True, text=True, check=True,
                               cwd=tmp_path).stdout.strip()
    assert (Path(installed) / "templates" / "systemd" / "service.j2").is_file()
    assert "site-packages" in installed
