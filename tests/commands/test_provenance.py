"""Render does not restart a fleet for nothing, and does not render over another site."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, MINIMAL, Result
from tests.test_write import snapshot


@pytest.fixture
def examples(tmp_path: Path) -> Iterator[Path]:
    """A copy of examples/ (render must not write into the checkout), as the cwd."""
    copy = tmp_path / "repo" / "examples"
    shutil.copytree(EXAMPLES, copy)
    before = Path.cwd()
    os.chdir(copy.parent)
    try:
        yield copy
    finally:
        os.chdir(before)


def test_the_same_site_rendered_from_another_directory_changes_nothing(
        run_cli: Callable[..., Result], examples: Path) -> None:
    out = examples.parent / "out"
    first = run_cli("render", "examples/minimal.yaml", out)
    assert first.code == 0, first.err
    before = snapshot(out)
    os.chdir(examples)
    again = run_cli("render", "minimal.yaml", out)
    assert again.code == 0, again.err
    assert again.out.splitlines() == [
        f"0 file(s) changed, {len(before) - 2} unchanged in {out} (for Celery 5.7.0, assumed)"]
    assert snapshot(out) == before  # nothing rewritten: a launch --systemd restarts nothing
    unit = (out / "systemd" / "myapp-worker-default.service").read_text()
    assert unit.splitlines()[0].endswith(" from minimal.yaml.")


def test_unchanged_files_are_one_summary_line_unless_verbose(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    site, out = write_site(MINIMAL), tmp_path / "out"
    assert run_cli("render", site, out).code == 0
    quiet = run_cli("render", site, out)
    assert quiet.out.splitlines() == [
        f"0 file(s) changed, 7 unchanged in {out} (for Celery 5.7.0, assumed)"]
    verbose = run_cli("render", site, out, "-v")
    assert len(verbose.out.splitlines()) == 8
    assert all(line.split()[0] == "unchanged" for line in verbose.out.splitlines()[:7])


def test_another_projects_render_directory_is_refused_unless_forced(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = write_site(MINIMAL, "first.yaml")
    other = write_site(MINIMAL.replace("project: demo", "project: other"), "other.yaml")
    assert run_cli("render", first, out).code == 0
    before = snapshot(out)
    refused = run_cli("render", other, out)
    assert refused.code == 1
    assert refused.err.splitlines()[-1] == (
        f"crate-deploy: error: {out} holds the rendered site of project 'demo' (from first.yaml), "
        "not 'other': rendering here would remove its files; render into another directory, "
        "or pass --force to replace it")
    assert snapshot(out) == before
    assert run_cli("render", other, out, "--check").code == 1  # --check refuses too
    forced = run_cli("render", other, out, "--force")
    assert forced.code == 0, forced.err
    assert "removed" in forced.out and not (out / "systemd" / "demo.target").exists()


def test_two_output_directories_are_refused(run_cli: Callable[..., Result],
                                            write_site: Callable[..., Path],
                                            tmp_path: Path) -> None:
    result = run_cli("render", write_site(MINIMAL), tmp_path / "a", "-o", tmp_path / "b")
    assert result.code == 2
    assert "two output directories" in result.err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_source_path_with_a_line_break_stays_one_comment_line(
        run_cli: Callable[..., Result], tmp_path: Path) -> None:
    site = tmp_path / "site\nExecStartPre=x.yaml"
    site.write_text(MINIMAL.replace("    ", "", 1).replace("\n    ", "\n"))
    out = tmp_path / "out"
    result = run_cli("render", site, out)
    assert result.code == 0, result.err
    unit = (out / "systemd" / "demo-worker-default.service").read_text()
    assert "\nExecStartPre" not in unit
    assert unit.splitlines()[0].endswith(" from site\\nExecStartPre=x.yaml.")
