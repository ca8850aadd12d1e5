"""Shared fixtures: run the CLI in-process, write site files, find the examples."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from crate_deploy.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run `crate-deploy ARGS` in this process; returns exit code, stdout and stderr."""

    def run(*args: str | Path) -> Result:
        capsys.readouterr()
        try:
            main([str(arg) for arg in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        else:  # pragma: no cover - main always exits
            code = 0
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def write_site(tmp_path: Path) -> Callable[[str], Path]:
    """Write a site file from (dedented) YAML text into the test's tmp_path."""

    def write(text: str, name: str = "site.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


MINIMAL = """\
    project: demo
    app: demo.app
    celery: /usr/bin/celery
    broker:
      urls: ["amqp://127.0.0.1:5672//"]
    workers:
      - name: default
        queues: [celery]
"""
