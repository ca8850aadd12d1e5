"""write.py and the render command: Ansible-like reporting, atomic, never clobbering."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from crate_deploy.commands.unchanged import RENDER_RECORD_FILE
from crate_deploy.errors import RenderError
from crate_deploy.render import RenderedFile
from crate_deploy.write import apply_changes, plan_changes
from tests.conftest import MINIMAL, Result


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below directory, bytes and mtime; but the render record, which a full
    render rewrites each time for the next one's fast path (tests/commands/test_unchanged.py),
    and which nothing launched reads."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != RENDER_RECORD_FILE}


def statuses(result: Result) -> dict[str, str]:
    found = {}
    for line in result.out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("created", "changed", "unchanged", "removed"):
            found[Path(parts[1]).name] = parts[0]
    return found


def test_created_then_unchanged_then_changed_then_removed(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    site = write_site(MINIMAL + "    beat: {enabled: true}\n")
    first = run_cli("render", site, "-o", out)
    assert first.code == 0, first.err
    assert set(statuses(first).values()) == {"created"}
    before = snapshot(out)

    again = run_cli("render", site, "-o", out, "-v")  # -v lists the unchanged files
    assert set(statuses(again).values()) == {"unchanged"}
    assert snapshot(out) == before  # nothing rewritten: same bytes, same mtimes

    site.write_text(site.read_text().replace("concurrency", "x").replace(
        "queues: [celery]", "queues: [celery]\n    concurrency: 3").replace(
        "beat: {enabled: true}", "beat: {enabled: false}"))
    third = run_cli("render", site, "-o", out, "--verbose")
    assert third.code == 0, third.err
    found = statuses(third)
    assert found["demo-worker-default.service"] == "changed"
    assert found["demo-beat.service"] == "removed"
    assert found["demo.env"] == "unchanged"
    assert not (out / "systemd/demo-beat.service").exists()
    assert snapshot(out)["demo.env"] == before["demo.env"]


def test_check_writes_nothing_and_exits_1_when_something_would_change(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    site = write_site(MINIMAL)
    result = run_cli("render", site, "-o", out, "--check")
    assert result.code == 1
    assert not out.exists()
    assert run_cli("render", site, "-o", out).code == 0
    assert run_cli("render", site, "-o", out, "--check").code == 0


def test_diff_shows_changes_with_secrets_masked(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    site = write_site(MINIMAL)
    run_cli("render", site, "-o", out)
    # Someone pasted a password into a rendered file by hand; the diff must not show it.
    env = out / "demo.env"
    env.write_text(env.read_text() + "BROKER_PASSWORD=s3cr3t-hand-edit\n")
    result = run_cli("render", site, "-o", out, "--diff")
    assert "-BROKER_PASSWORD=****" in result.out
    assert "s3cr3t-hand-edit" not in result.out + result.err
    assert "changed" in statuses(result)["demo.env"]


def test_foreign_file_is_never_overwritten(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "systemd").mkdir(parents=True)
    mine = out / "systemd/demo.target"
    mine.write_text("my own unit\n")
    result = run_cli("render", write_site(MINIMAL), "-o", out)
    assert result.code == 1
    assert "was not written by crate-deploy" in result.err
    assert mine.read_text() == "my own unit\n"
    assert sorted(p.name for p in out.rglob("*")) == ["demo.target", "systemd"]


def test_invalid_site_writes_nothing(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    site = write_site(MINIMAL)
    run_cli("render", site, "-o", out)
    before = snapshot(out)
    site.write_text(MINIMAL.replace("[celery]", "[celery, nope]"))
    result = run_cli("render", site, "-o", out)
    assert result.code == 2
    assert snapshot(out) == before


def test_failure_while_staging_leaves_the_directory_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "out"
    apply_changes(out, plan_changes(out, [RenderedFile("a.txt", "one\n")]))
    before = snapshot(out)
    # b/ cannot be created (a file stands there), so staging fails after a.txt was staged.
    (out / "b").write_text("in the way\n")
    files = [RenderedFile("a.txt", "two\n"), RenderedFile("b/c.txt", "three\n")]
    with pytest.raises(RenderError):
        apply_changes(out, plan_changes(out, files))
    assert snapshot(out) == {**before, "b": snapshot(out)["b"]}
    assert sorted(os.listdir(out)) == [".crate-deploy-manifest.json", "a.txt", "b"]


def test_modes_are_kept_as_rendered(tmp_path: Path) -> None:
    out = tmp_path / "out"
    apply_changes(out, plan_changes(out, [RenderedFile("secret", "x\n", 0o600)]))
    assert (out / "secret").stat().st_mode & 0o777 == 0o600


def test_changing_a_live_queue_s_arguments_is_warned_about(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    site = write_site(MINIMAL + "    celery_version: '5.7.0'\n")
    assert run_cli("render", site, "-o", out).code == 0
    site.write_text(site.read_text() + "queues: [{name: celery, type: quorum}]\n")
    result = run_cli("render", site, "-o", out)
    assert result.code == 0, result.err
    assert ("note: queue celery changes type: RabbitMQ refuses to redeclare an existing queue "
            "with other arguments (PRECONDITION_FAILED); drain and delete it before the "
            "workers restart, or give the queue a new name") in result.err
