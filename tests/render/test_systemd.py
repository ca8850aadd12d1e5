"""The rendered units pass systemd's own checks: verify, and a low security exposure."""

from __future__ import annotations

from pathlib import Path

import pytest

from crate_deploy.render import render_site
from crate_deploy.site.validate import validate_file
from crate_deploy.target.versions import NEWEST_KNOWN
from tests.conftest import EXAMPLES
from tests.unit_checks import exposure, verify_units

# Celery's documented celery.service scores about 9.6 ("UNSAFE"); 0 is best.
MAX_EXPOSURE = 2.5


def render_units(example: str, directory: Path) -> Path:
    site = validate_file(EXAMPLES / example).site
    rendering = render_site(site, example, site.paths.config_dir or "/srv/out", NEWEST_KNOWN)
    units = directory / "units"
    units.mkdir()
    for file in rendering.files:
        if file.path.startswith("systemd/"):
            (units / Path(file.path).name).write_text(file.content)
    return units


@pytest.mark.parametrize("example", ["minimal.yaml", "site.yaml", "demo/site.yaml"])
def test_units_pass_systemd_analyze_verify(example: str, tmp_path: Path) -> None:
    units = render_units(example, tmp_path)
    result = verify_units(units, tmp_path / "root")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("example", ["minimal.yaml", "site.yaml", "demo/site.yaml"])
def test_every_service_is_hardened(example: str, tmp_path: Path) -> None:
    units = render_units(example, tmp_path)
    scores = {unit.name: exposure(unit) for unit in units.glob("*.service")}
    assert scores
    assert all(score <= MAX_EXPOSURE for score in scores.values()), scores


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit with a bad directive is reported."""
    units = render_units("minimal.yaml", tmp_path)
    unit = next(units.glob("*worker*.service"))
    unit.write_text(unit.read_text().replace("KillMode=mixed", "KillMode=sideways"))
    result = verify_units(units, tmp_path / "root")
    assert "Failed to parse kill mode specification, ignoring: sideways" in result.stderr
