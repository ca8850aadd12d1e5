"""The unchanged-render fast path under attack: odd standard streams, site files that are
not regular files, and the environment; each case once broke it (it answered, or ended,
otherwise than the full render would).

Through the real program in a subprocess: these are properties of the process (its file
descriptors, its environment), which an in-process run would not have.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.commands.test_unchanged import (
    ANSWERED,
    STEPS_ASIDE,
    full_render,
    make_venv,
    without_debug,
)
from tests.commands.test_unchanged import SITE as SCENARIO_SITE
from tests.conftest import EXAMPLES, Result

PROGRAM = str(Path(sys.executable).parent / "crate-deploy")


def run(argv: list[str], *, fast_path: bool = True, cwd: Path, shell_redirect: str = "",
        stdin: bytes | None = None, environment: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[bytes]:
    """The real program; `shell_redirect` (">&-") is applied by a shell around it."""
    env = {name: value for name, value in os.environ.items() if name != "CRATE_DEPLOY_DEBUG"}
    env.update({"CRATE_DEPLOY_FAST_PATH": "1" if fast_path else "0", **(environment or {})})
    command = ["sh", "-c", f'exec "$@" {shell_redirect}', "sh", PROGRAM, *argv]
    return subprocess.run(command, cwd=cwd, env=env, input=stdin, capture_output=True,
                          check=False)


def recorded(tmp_path: Path) -> list[str]:
    """A site rendered once (so recorded) into tmp_path/out: the command line."""
    argv = ["render", str(EXAMPLES / "minimal.yaml"), "-o", str(tmp_path / "out")]
    assert run(argv, cwd=tmp_path).returncode == 0
    debug = run(argv, cwd=tmp_path, environment={"CRATE_DEPLOY_DEBUG": "1"})
    assert ANSWERED.encode() in debug.stderr
    return argv


@pytest.mark.parametrize("redirect", [">&-", "2>&-", ">&- 2>&-"])
def test_a_closed_stdout_or_stderr_ends_as_the_full_render_does(
        tmp_path: Path, redirect: str) -> None:
    """With fd 1 or 2 closed Python has no sys.stdout (or sys.stderr): the full render
    (click) prints nothing there and exits 0; the fast path once crashed (exit 3)."""
    argv = recorded(tmp_path)
    fast = run(argv, cwd=tmp_path, shell_redirect=redirect)
    full = run(argv, fast_path=False, cwd=tmp_path, shell_redirect=redirect)
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        full.returncode, full.stdout, full.stderr)
    assert fast.returncode == 0


SITE = """\
    project: piped
    app: piped.app
    venv: /srv/piped/venv
    broker:
      urls: [amqp://127.0.0.1:5672//]
    workers:
      - name: default
        queues: [celery]
        concurrency: 2
"""


def test_a_site_read_from_a_pipe_is_read_once_by_the_render(tmp_path: Path) -> None:
    """`generate | crate-deploy render /dev/stdin`: the fast path must not drink the pipe
    it then steps aside from, or the full render finds the site file empty (exit 2)."""
    site = textwrap.dedent(SITE).encode()
    argv = ["render", "/dev/stdin", "-o", str(tmp_path / "out")]
    assert run(argv, cwd=tmp_path, stdin=site).returncode == 0
    edited = site.replace(b"concurrency: 2", b"concurrency: 3")
    environment = {"CRATE_DEPLOY_DEBUG": "1"}
    fast = run([*argv, "--check"], cwd=tmp_path, stdin=edited, environment=environment)
    full = run([*argv, "--check"], fast_path=False, cwd=tmp_path, stdin=edited)
    assert STEPS_ASIDE.encode() in fast.stderr
    assert (fast.returncode, fast.stdout) == (full.returncode, full.stdout)
    assert without_debug(fast.stderr.decode()) == without_debug(full.stderr.decode())
    assert fast.returncode == 1 and b"would change; nothing written" in fast.stdout


def test_a_control_character_in_the_report_goes_to_the_full_render(
        tmp_path: Path, run_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch) -> None:
    """A venv's celery metadata says `Version: 5.3.6<ESC>[0m`: click strips the escape
    sequence from what it prints (not a terminal), the fast path once printed it raw."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRATE_DEPLOY_DEBUG", "1")
    monkeypatch.delenv("CRATE_DEPLOY_FAST_PATH", raising=False)
    make_venv(tmp_path / "venv", "5.3.6\x1b[0m")
    (tmp_path / "secrets.env").write_text("BROKER_PASSWORD=Secret-Value-1234\n")
    (tmp_path / "site.yaml").write_text(textwrap.dedent(SCENARIO_SITE))
    command = ["render", "site.yaml", "-o", "out"]
    assert run_cli(*command).code == 0
    fast = run_cli(*command)
    full = full_render(run_cli, monkeypatch, *command)
    assert STEPS_ASIDE + "output that is not printable ASCII" in fast.err
    assert (fast.code, fast.out, without_debug(fast.err)) == (
        full.code, full.out, without_debug(full.err))
    assert "\x1b" not in fast.out + fast.err
    assert "for Celery 5.3.6, probed" in fast.out


def test_a_library_module_edited_in_place_is_an_input(tmp_path: Path) -> None:
    """jinja2 edited in place (a patch, an editable install of it): its sys.path entry does
    not change, the module file does. The fast path once answered "0 would change" from
    the record while the full render, running the edited jinja2, changed every file."""
    import jinja2

    libraries = tmp_path / "libraries"
    shutil.copytree(Path(jinja2.__file__).parent, libraries / "jinja2",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from crate_deploy.cli import main; main(sys.argv[1:])")
    command = [sys.executable, "-c", code, str(libraries), "render",
               str(EXAMPLES / "minimal.yaml"), "-o", str(tmp_path / "out"), "--check"]
    environment = {**os.environ, "CRATE_DEPLOY_DEBUG": "1"}
    environment.pop("CRATE_DEPLOY_FAST_PATH", None)

    def render(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command[:-1], *extra], capture_output=True, text=True,
                              env=environment, cwd=tmp_path, check=False)

    # A record is left once the copy is older than the render (its ctime, by a margin).
    for _ in range(50):
        if "no record" not in render().stderr and ANSWERED in render().stderr:
            break
        time.sleep(0.1)
    assert ANSWERED in render().stderr
    module = libraries / "jinja2/environment.py"
    before = module.stat()
    text = module.read_text()
    old = "return self.environment.concat(self.root_render_func(ctx))"
    assert old in text
    with module.open("r+") as stream:  # in place: the same inode, the folder untouched
        stream.write(text.replace(old, f"{old} + '# patched\\n'", 1))
    os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = render("--check")
    assert STEPS_ASIDE + f"input changed: module {module}" in result.stderr
    assert result.returncode == 1 and "would change" in result.stdout


def test_a_secrets_file_that_is_a_folder_is_asked_again_as_read(
        tmp_path: Path, run_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a folder fails (EISDIR, a warning); asked again it fails the same way, so the
    fast path still answers: only a pipe or a device is never read again."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRATE_DEPLOY_DEBUG", "1")
    monkeypatch.delenv("CRATE_DEPLOY_FAST_PATH", raising=False)
    (tmp_path / "secrets.env").mkdir()
    (tmp_path / "site.yaml").write_text(textwrap.dedent(SCENARIO_SITE))
    command = ["render", "site.yaml", "-o", "out"]
    first = run_cli(*command)
    assert first.code == 0 and "cannot be read by this user" in first.err, first.err
    again = run_cli(*command)
    assert ANSWERED in again.err, again.err
    assert without_debug(again.err) == without_debug(first.err)
