"""crate-deploy migrate: renamed keys rewritten in place; comments, order, quoting kept.

No real key has been renamed yet, so these use the test-only renames of
test_compat_keys (workers[].processes -> concurrency, celery_program -> celery).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from crate_deploy.site import compat_keys
from crate_deploy.site.validate import validate_file
from tests.conftest import Result
from tests.site.test_compat_keys import TEST_RENAMES

OLD = """\
# yaml-language-server: $schema=../docs/site.schema.json
# Our site: reviewed in PR #12.
project: demo
app: demo.app
celery_program: "/usr/bin/celery"   # the system's celery

broker:
  urls: ['amqp://127.0.0.1:5672//']   # loopback only

workers:
  # the default pool
  - name: default
    processes: 7   # seven, not eight
    queues: [celery]
  - queues: [celery]
    name: second
    processes: 2
"""

NEW = (OLD.replace('celery_program: "/usr/bin/celery"', 'celery: "/usr/bin/celery"')
       .replace("processes: 7", "concurrency: 7").replace("processes: 2", "concurrency: 2"))


@pytest.fixture(autouse=True)
def renames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat_keys, "DEPRECATED_KEYS", TEST_RENAMES)


def test_migrate_renames_only_the_keys(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(OLD)
    site.chmod(0o640)
    result = run_cli("migrate", site)
    assert result.code == 0, result.err
    assert site.read_text() == NEW  # every comment, blank line, quote and key order kept
    assert site.stat().st_mode & 0o777 == 0o640
    assert f"{site}: renamed 3 key(s); comments and order kept" in result.out
    assert "-    processes: 7   # seven, not eight\n+    concurrency: 7   # seven, not eight\n" \
        in result.out
    assert validate_file(site).warnings == []
    assert [p.name for p in tmp_path.iterdir()] == ["site.yaml"]  # no temporary left behind

    mtime = site.stat().st_mtime_ns
    again = run_cli("migrate", site)
    assert again.code == 0
    assert again.out == f"{site}: nothing to migrate\n"
    assert site.stat().st_mtime_ns == mtime


def test_check_writes_nothing(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(OLD)
    result = run_cli("migrate", site, "--check")
    assert result.code == 1
    assert result.out.endswith("check: 3 key(s) would be renamed; nothing written\n")
    assert site.read_text() == OLD


@pytest.mark.parametrize("layout", [
    # sequences flush with their key, four-space mappings
    "project: demo\napp: demo.app\ncelery_program: /usr/bin/celery\nbroker:\n"
    "    urls: [amqp://127.0.0.1:5672//]\nworkers:\n-   name: default\n    processes: 3\n"
    "    queues: [celery]\n",
    "project: demo\napp: demo.app\ncelery_program: /usr/bin/celery\nbroker:\n"
    "  urls: [amqp://127.0.0.1:5672//]\nworkers:\n- name: default\n  processes: 3\n"
    "  queues: [celery]\n",
])
def test_other_indentation_styles_are_kept(run_cli: Callable[..., Result], tmp_path: Path,
                                           layout: str) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(layout)
    assert run_cli("migrate", site).code == 0
    assert site.read_text() == layout.replace("celery_program:", "celery:").replace(
        "processes:", "concurrency:")


def test_a_layout_it_cannot_keep_is_left_alone(run_cli: Callable[..., Result],
                                               tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    text = OLD.replace("app: demo.app", "app:     demo.app")  # aligned values
    site.write_text(text)
    result = run_cli("migrate", site)
    assert result.code == 1
    assert f"{site}:5:1: celery_program: warning: deprecated: renamed to 'celery'" in result.err
    assert "rename the key(s) above by hand; nothing was written" in result.err
    assert site.read_text() == text


def test_a_symlink_is_refused(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_text(OLD)
    link = tmp_path / "site.yaml"
    os.symlink(real, link)
    result = run_cli("migrate", link)
    assert result.code == 2
    assert "is a symbolic link" in result.err
    assert link.is_symlink() and real.read_text() == OLD


def test_a_site_for_a_newer_crate_deploy_is_not_touched(run_cli: Callable[..., Result],
                                                        tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(OLD + 'requires: ">=99"\n')
    result = run_cli("migrate", site)
    assert result.code == 2
    assert "this site needs crate-deploy 99 or later" in result.err
    assert site.read_text() == OLD + 'requires: ">=99"\n'
