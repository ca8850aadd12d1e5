"""Run systemd's own checkers on rendered units, offline, as the tests need them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from crate_deploy.systemd.units import split_command_line

SYSTEM_UNITS = Path("/lib/systemd/system")


def verify_units(unit_dir: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` every unit in unit_dir inside a fake root.

    verify checks that each ExecStart program exists, so the root gets an executable
    stub at each one: the units name the target server's paths, not this machine's.
    """
    installed = root / "etc/systemd/system"
    installed.mkdir(parents=True, exist_ok=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True,
                    dirs_exist_ok=True)
    units = []
    for unit in sorted(unit_dir.iterdir()):
        shutil.copy(unit, installed / unit.name)
        units.append(str(installed / unit.name))
        for line in re.findall(r"^ExecStart=(.*)$", unit.read_text(), re.MULTILINE):
            program = split_command_line(line, {})[0]  # quoted paths too
            stub = root / program.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units],
                          capture_output=True, text=True, check=False)


def exposure(unit: Path) -> float:
    """The overall exposure `systemd-analyze security --offline=yes` gives a unit file."""
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                            capture_output=True, text=True, check=False, cwd=unit.parent)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))
