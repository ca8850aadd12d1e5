"""The shipped pre-commit hook, run by pre-commit itself on a throwaway repository.

pre-commit clones the hook repository at a commit and installs it into its own
virtualenv, as it would for a user: this checkout's current files are committed
into a snapshot repository first, so uncommitted work is what is tested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT, Result

PRE_COMMIT = [sys.executable, "-m", "pre_commit"]
INVALID = """\
project: myapp
app: myapp.celery
broker:
  urls: [amqp://myapp@127.0.0.1:5672/myapp]
workers:
  - name: default
    queues: [celery]
    concurency: 4
"""


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                            check=True)
    return result.stdout.strip()


def snapshot_of_this_checkout(destination: Path) -> str:
    """A git repository holding this checkout's files as they are now; its commit."""
    listed = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    git(destination, "init", "-q")
    git(destination, "add", "-A")
    git(destination, "commit", "-q", "-m", "snapshot")
    return git(destination, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("hook-repo")
    return path, snapshot_of_this_checkout(path)


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pre-commit cache for the module: the hook's virtualenv is built once."""
    return tmp_path_factory.mktemp("pre-commit-home")


def user_repository(path: Path, hook_repo: tuple[Path, str], hook_options: str = "") -> Path:
    """A repository with a valid and an invalid site file, and the hook configured."""
    repo_path, rev = hook_repo
    path.mkdir()
    git(path, "init", "-q")
    shutil.copy(EXAMPLES / "minimal.yaml", path / "site.yaml")
    (path / "deploy").mkdir()
    (path / "deploy/site-prod.yaml").write_text(INVALID)
    (path / "notes.yaml").write_text("not: [a site\n")  # matched by no pattern: never checked
    (path / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {repo_path}\n    rev: {rev}\n    hooks:\n"
        f"      - id: crate-deploy-validate\n{hook_options}")
    git(path, "add", "-A")
    return path


def pre_commit(repo: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PRE_COMMIT_HOME": str(home), "PRE_COMMIT_COLOR": "never"}
    return subprocess.run([*PRE_COMMIT, "run", "--verbose", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=1200, check=False)


@pytest.mark.slow
def test_hook_fails_on_the_invalid_site_and_passes_the_valid_one(
        tmp_path: Path, hook_repo: tuple[Path, str], pre_commit_home: Path) -> None:
    repo = user_repository(tmp_path / "user", hook_repo)
    result = pre_commit(repo, pre_commit_home, "--all-files")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "crate-deploy validate" in output and "Failed" in output
    assert ("deploy/site-prod.yaml:8:5: workers[0].concurency: unknown key 'concurency'; "
            "did you mean 'concurrency'?") in output
    assert "site.yaml: valid (1 worker pool(s)" in output
    assert "notes.yaml" not in output

    alone = pre_commit(repo, pre_commit_home, "--files", "site.yaml")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "Passed" in alone.stdout


@pytest.mark.slow
def test_the_files_pattern_can_be_overridden(
        tmp_path: Path, hook_repo: tuple[Path, str], pre_commit_home: Path) -> None:
    repo = user_repository(tmp_path / "user", hook_repo,
                           "        files: ^site\\.yaml$\n")
    result = pre_commit(repo, pre_commit_home, "--all-files")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "site-prod.yaml" not in result.stdout


def test_validate_takes_several_files_and_reports_every_problem(
        run_cli: Callable[..., Result], write_site: Callable[..., Path]) -> None:
    """What the hook runs: one call with every staged site file."""
    bad = write_site(INVALID, "site-a.yaml")
    worse = write_site(INVALID.replace("project: myapp", "project: My App"), "site-b.yaml")
    result = run_cli("validate", EXAMPLES / "minimal.yaml", bad, worse)
    assert result.code == 2
    assert f"{EXAMPLES / 'minimal.yaml'}: valid (1 worker pool(s)" in result.out
    problems = [line for line in result.err.splitlines() if ": workers[0]" in line
                or ": project:" in line]
    assert problems == [
        f"{bad}:8:5: workers[0].concurency: unknown key 'concurency'; did you mean "
        "'concurrency'?",
        f"{worse}:1:1: project: must start with a lowercase letter and use only a-z, 0-9, "
        "'_' and '-' (at most 40 characters)",
        f"{worse}:8:5: workers[0].concurency: unknown key 'concurency'; did you mean "
        "'concurrency'?"]
    # Each file also lacks venv/celery, a cross-check reported with the field errors.
    assert result.err.count(": venv: give exactly one of venv") == 2
    assert result.err.endswith("5 error(s): nothing was written\n")
