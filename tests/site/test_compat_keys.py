"""Site files across crate-deploy versions: `requires`, and renamed (deprecated) keys."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import yaml

from crate_deploy import __version__
from crate_deploy.site import compat_keys
from crate_deploy.site.compat_keys import Renamed
from crate_deploy.site.described import site_schema
from crate_deploy.site.reference import markdown_reference
from crate_deploy.site.validate import validate_file
from tests.conftest import MINIMAL, Result

# A site written for a future crate-deploy: it states so, and uses keys this one lacks.
FUTURE = """\
    # written for a newer crate-deploy
    requires: ">=99.1"
    project: demo
    app: demo.app
    celery: /usr/bin/celery
    canary: {percent: 10}
    broker:
      urls: ["amqp://127.0.0.1:5672//"]
      tls: {verify: true}
    workers:
      - name: default
        queues: [celery]
        priority_steps: 3
"""

# A test-only rename: no key of the real model has been renamed yet (DEPRECATED_KEYS is
# empty), so the mechanism is exercised with old spellings that never existed.
TEST_RENAMES = (Renamed("workers[].processes", "concurrency", "0.2"),
                Renamed("celery_program", "celery", "0.2"))


def test_a_site_for_a_newer_crate_deploy_says_so_and_nothing_else(
        run_cli: Callable[..., Result], write_site: Callable[..., Path]) -> None:
    path = write_site(FUTURE)
    result = run_cli("validate", path)
    assert result.code == 2
    assert result.err == (
        f"{path}:2:1: requires: this site needs crate-deploy 99.1 or later (this is "
        f"{__version__}): upgrade crate-deploy before using this site file\n"
        "1 error(s): nothing was written\n")
    assert "unknown key" not in result.err


def test_render_refuses_it_too_and_writes_nothing(
        run_cli: Callable[..., Result], write_site: Callable[..., Path],
        tmp_path: Path) -> None:
    result = run_cli("render", write_site(FUTURE), "-o", tmp_path / "out")
    assert result.code == 2
    assert "needs crate-deploy 99.1 or later" in result.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("requires", [f">={__version__}", ">=0.0.1,<99", "~=0.1", ""])
def test_a_met_requirement_is_valid(write_site: Callable[..., Path], requires: str) -> None:
    text = MINIMAL + f'    requires: "{requires}"\n' if requires else MINIMAL
    validated = validate_file(write_site(text))
    assert validated.warnings == []


@pytest.mark.parametrize(("requires", "message"), [
    ('"<0.0.5"', "this site needs crate-deploy <0.0.5 (this is "),
    ('">0.0.1,!=' + __version__ + '"', "this site needs crate-deploy !="),
    ("0.3", 'must be a quoted version specifier naming the oldest crate-deploy the site '
            'needs, like ">=0.3"'),
    ('"version three"', "must be a quoted version specifier"),
])
def test_an_unmet_or_unreadable_requirement(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], requires: str,
        message: str) -> None:
    path = write_site(MINIMAL + f"    requires: {requires}\n")
    result = run_cli("validate", path)
    assert result.code == 2
    assert result.err.startswith(f"{path}:9:1: requires: ")
    assert message in result.err


def test_a_deprecated_key_is_accepted_with_a_warning_naming_the_new_one(
        run_cli: Callable[..., Result], write_site: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(compat_keys, "DEPRECATED_KEYS", TEST_RENAMES)
    path = write_site(MINIMAL.replace("celery: /usr/bin/celery", "celery_program: /usr/bin/celery")
                      + "        processes: 7\n")
    result = run_cli("render", path, "-o", tmp_path / "out")
    assert result.code == 0, result.err
    assert result.err.splitlines()[:2] == [
        f"{path}:3:1: celery_program: warning: deprecated: renamed to 'celery' in "
        "crate-deploy 0.2; write celery (`crate-deploy migrate` rewrites the file)",
        f"{path}:9:5: workers[0].processes: warning: deprecated: renamed to 'concurrency' in "
        "crate-deploy 0.2; write workers[0].concurrency (`crate-deploy migrate` rewrites "
        "the file)"]
    unit = (tmp_path / "out/systemd/demo-worker-default.service").read_text()
    assert "ExecStart=/usr/bin/celery " in unit and "--concurrency=7" in unit


def test_errors_under_the_old_name_point_at_it(
        write_site: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat_keys, "DEPRECATED_KEYS", TEST_RENAMES)
    path = write_site(MINIMAL + "        processes: 0\n")
    with pytest.raises(Exception, match=r":9:5: workers\[0\]\.concurrency: must be >= 1"):
        validate_file(path)


def test_old_and_new_name_together_is_an_error(
        run_cli: Callable[..., Result], write_site: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat_keys, "DEPRECATED_KEYS", TEST_RENAMES)
    path = write_site(MINIMAL + "        processes: 3\n        concurrency: 3\n")
    result = run_cli("validate", path)
    assert result.code == 2
    assert result.err.startswith(f"{path}:9:5: workers[0].processes: is the old name of "
                                 "'concurrency', which is given too: keep only 'concurrency'")


def test_the_reference_lists_deprecated_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "No key is deprecated in this release" in markdown_reference()
    monkeypatch.setattr(compat_keys, "DEPRECATED_KEYS", TEST_RENAMES)
    reference = markdown_reference()
    assert "| `workers[].processes` | `workers[].concurrency` | 0.2 |" in reference
    assert "| `celery_program` | `celery` | 0.2 |" in reference


def test_the_schema_accepts_old_spellings_as_deprecated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Editors check site files against the schema: an old spelling is marked deprecated,
    not refused as unknown."""
    document = yaml.safe_load(textwrap.dedent(MINIMAL + "        processes: 3\n"))
    assert document["workers"][0]["processes"] == 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, site_schema())
    monkeypatch.setattr(compat_keys, "DEPRECATED_KEYS", TEST_RENAMES)
    schema = site_schema()
    jsonschema.validate(document, schema)
    processes = schema["$defs"]["Worker"]["properties"]["processes"]
    assert processes["deprecated"] is True
    assert processes["description"] == "Deprecated: renamed to concurrency in crate-deploy 0.2."
    assert schema["properties"]["celery_program"]["deprecated"] is True
