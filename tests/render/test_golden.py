"""Each example renders to exactly the files under tests/golden/<example>/.

To accept a deliberate change, regenerate and review the diff:
    CRATE_DEPLOY_UPDATE_GOLDEN=1 scripts/test tests/render/test_golden.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from crate_deploy.render import render_site
from crate_deploy.site.validate import validate_file
from crate_deploy.target.probe import choose_versions
from crate_deploy.target.versions import NEWEST_KNOWN
from tests.conftest import EXAMPLES, ROOT

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
OUTPUT = "/srv/rendered"  # the config_dir used when a site leaves it to the output directory
CASES = {"minimal": "minimal.yaml", "site": "site.yaml", "demo": "demo/site.yaml",
         "fast": "fast.yaml",
         "site-kubernetes": "site.yaml", "kubernetes": "kubernetes.yaml"}
TARGETS = {"site-kubernetes": "kubernetes", "kubernetes": "kubernetes"}  # else systemd


def rendered(example: str, target: str = "systemd") -> dict[str, str]:
    validated = validate_file(EXAMPLES / example)
    site = validated.site
    config_dir = site.paths.config_dir or OUTPUT
    # As render would for a server elsewhere: the site's stated versions, else the newest
    # known (probing would tie the goldens to whatever this machine has installed).
    versions = choose_versions(site, Path("/nonexistent"))[0] if site.celery_version else (
        NEWEST_KNOWN)
    rendering = render_site(site, f"examples/{example}", config_dir, versions, target=target)
    # The demo's relative paths resolve inside this checkout: keep goldens portable.
    return {file.path: file.content.replace(str(ROOT), "@ROOT@") for file in rendering.files}


@pytest.mark.parametrize("case", sorted(CASES))
def test_example_matches_golden_files(case: str) -> None:
    files = rendered(CASES[case], TARGETS.get(case, "systemd"))
    directory = GOLDEN / case
    if os.environ.get("CRATE_DEPLOY_UPDATE_GOLDEN"):
        shutil.rmtree(directory, ignore_errors=True)
        for path, content in files.items():
            (directory / path).parent.mkdir(parents=True, exist_ok=True)
            (directory / path).write_text(content, encoding="utf-8")
    expected = {str(path.relative_to(directory)): path.read_text(encoding="utf-8")
                for path in directory.rglob("*") if path.is_file()}
    assert sorted(files) == sorted(expected)
    for path, content in files.items():
        assert content == expected[path], f"{case}/{path} differs from its golden file"
