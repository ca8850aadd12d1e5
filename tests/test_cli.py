"""The command line: exit codes, messages on stderr, never a traceback."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import EXAMPLES, MINIMAL, ROOT, Result


def test_validate_ok(run_cli: Callable[..., Result]) -> None:
    result = run_cli("validate", EXAMPLES / "site.yaml")
    assert result.code == 0
    assert result.out.endswith("valid (2 worker pool(s), 3 queue(s); for Celery 5.2.7, site)\n")


def test_validate_says_which_celery_it_assumed(run_cli: Callable[..., Result]) -> None:
    result = run_cli("validate", EXAMPLES / "minimal.yaml")
    assert result.code == 0
    assert result.out.endswith("(1 worker pool(s), 1 queue(s); for Celery 5.7.0, assumed)\n")
    assert result.err == ("note: /srv/myapp/venv/bin/celery is not on this machine: assuming "
                          "Celery 5.7.0 (the newest known); set celery_version in the site file "
                          "to choose\n")


def test_invalid_site_exits_2_with_positions(run_cli: Callable[..., Result],
                                             write_site: Callable[..., Path]) -> None:
    path = write_site(MINIMAL.replace("name: default", "name: Bad Name"))
    result = run_cli("validate", path)
    assert result.code == 2
    assert result.err.startswith(f"{path}:7:5: workers[0].name: must start with a lowercase")
    assert result.err.endswith("1 error(s): nothing was written\n")


def test_missing_site_file_is_one_line(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    result = run_cli("validate", tmp_path / "nope.yaml")
    assert result.code == 2
    assert result.err.splitlines()[0] == (
        f"{tmp_path / 'nope.yaml'}:1:1: cannot read the site file: No such file or directory")


def test_render_of_invalid_site_creates_no_directory(run_cli: Callable[..., Result],
                                                     write_site: Callable[..., Path],
                                                     tmp_path: Path) -> None:
    result = run_cli("render", write_site("project: [\n"), "-o", tmp_path / "out")
    assert result.code == 2
    assert not (tmp_path / "out").exists()


def test_schema_is_json(run_cli: Callable[..., Result]) -> None:
    result = run_cli("schema")
    assert json.loads(result.out)["title"] == "Site"


def test_no_traceback_from_the_real_program(tmp_path: Path) -> None:
    broken = tmp_path / "site.yaml"
    broken.write_bytes(b"project: \xff\x00\n")
    result = subprocess.run([sys.executable, "-m", "crate_deploy", "render", str(broken),
                             "-o", str(tmp_path / "out")], capture_output=True, text=True,
                            cwd=ROOT, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{broken}:1:10: the site file is not valid UTF-8")


def test_validate_takes_no_output_directory(run_cli: Callable[..., Result]) -> None:
    result = run_cli("validate", EXAMPLES / "minimal.yaml", "-o", "somewhere")
    assert result.code == 2
    assert "No such option '-o'" in result.err


def test_help_lists_every_command_without_cutting_its_description() -> None:
    result = subprocess.run([sys.executable, "-m", "crate_deploy", "--help"],
                            capture_output=True, text=True, check=True, cwd=ROOT,
                            env={**os.environ, "COLUMNS": "60"})
    listing = " ".join(result.stdout.split("Commands:")[1].split())
    assert "..." not in listing
    assert ("render Render systemd units (or Kubernetes manifests), Celery and Flower config "
            "for a site file into DIRECTORY.") in listing
    assert "status Say what is up and what each queue holds; exit 1 unless everything is " \
           "up." in listing


def test_shell_completion_as_the_readme_says() -> None:
    """README: eval "$(_CRATE_DEPLOY_COMPLETE=bash_source crate-deploy)"."""
    script = subprocess.run([sys.executable, "-m", "crate_deploy"], capture_output=True,
                            text=True, check=True, cwd=ROOT,
                            env={**os.environ, "_CRATE_DEPLOY_COMPLETE": "bash_source"})
    assert "complete -o nosort -F" in script.stdout
    words = subprocess.run([sys.executable, "-m", "crate_deploy"], capture_output=True,
                           text=True, check=True, cwd=ROOT,
                           env={**os.environ, "_CRATE_DEPLOY_COMPLETE": "bash_complete",
                                "COMP_WORDS": "crate-deploy re", "COMP_CWORD": "1"})
    assert words.stdout.split() == ["plain,render", "plain,requeue", "plain,restart"]


def test_requeue_takes_the_directory_first(run_cli: Callable[..., Result],
                                           tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    not_a_directory = run_cli("requeue", "work", missing)
    assert not_a_directory.code == 2
    assert not_a_directory.err == (
        "crate-deploy: error: work is not a directory: requeue takes the render directory "
        "first, as every command does (crate-deploy requeue DIRECTORY [QUEUE]...)\n")
    old_spelling = run_cli("requeue", "work", "-C", missing)
    assert old_spelling.err.startswith("note: -C is deprecated: give the directory first")
    assert f"no rendered site in {missing}" in old_spelling.err
    positional = run_cli("requeue", tmp_path)
    assert positional.code == 2 and f"no rendered site in {tmp_path}" in positional.err


def test_launch_root_is_created_when_missing(run_cli: Callable[..., Result],
                                             write_site: Callable[..., Path],
                                             tmp_path: Path) -> None:
    out, root = tmp_path / "out", tmp_path / "image" / "root"
    assert run_cli("render", write_site(MINIMAL), out).code == 0
    result = run_cli("launch", out, "--systemd", "--root", root)
    assert result.err.splitlines()[0] == f"created {root}"
    assert root.is_dir() and root.stat().st_mode & 0o777 == 0o755
    assert "No such directory" not in result.err
    (tmp_path / "file").write_text("")
    blocked = run_cli("launch", out, "--systemd", "--root", tmp_path / "file" / "root")
    assert blocked.code == 2
    assert blocked.err == (f"crate-deploy: error: --root {tmp_path / 'file' / 'root'}: cannot "
                           "create it (Not a directory)\n")


def _program(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


UNFORESEEN = """\
import crate_deploy.commands.render as render
def fail(*args):
    raise PermissionError(13, "cannot reach amqp://demo:s3cret-pw@127.0.0.1//\\nsecond line")
render.validate_command = fail
from crate_deploy.cli import main
main(["validate", "x.yaml"])
"""


def test_an_unforeseen_error_is_one_masked_line_with_exit_3() -> None:
    result = _program(UNFORESEEN)
    _, err = result.communicate(timeout=60)
    assert result.returncode == 3, err
    assert err == ("crate-deploy: unexpected error: PermissionError: [Errno 13] cannot reach "
                   "amqp://demo:****@127.0.0.1// second line (set CRATE_DEPLOY_DEBUG=1 for the "
                   "traceback)\n")


def test_ctrl_c_exits_130() -> None:
    import signal
    import time

    result = _program("import time, crate_deploy.commands.render as render\n"
                      "render.validate_command = lambda *args: (print('busy', flush=True), "
                      "time.sleep(60))\n"
                      "from crate_deploy.cli import main\nmain(['validate', 'x.yaml'])\n")
    assert result.stdout is not None
    assert result.stdout.readline() == "busy\n"
    time.sleep(0.2)
    result.send_signal(signal.SIGINT)
    _, err = result.communicate(timeout=60)
    assert result.returncode == 130, err
    assert "Traceback" not in err


def test_main_called_in_a_process_leaves_its_garbage_collection_alone(
        run_cli: Callable[..., Result]) -> None:
    """Only the program collects less often and, about to exit, freezes its objects
    (cli.main): a caller that goes on, like this test run, keeps collecting as it did."""
    thresholds = gc.get_threshold()
    assert run_cli("validate", EXAMPLES / "site.yaml").code == 0
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds


def test_the_program_collects_garbage_less_often(tmp_path: Path) -> None:
    code = ("import gc, sys\nsys.argv = ['crate-deploy', 'validate', sys.argv[1]]\n"
            "from crate_deploy.cli import main\ntry:\n    main()\nexcept SystemExit:\n"
            "    print(gc.get_threshold(), gc.get_freeze_count() > 0)")
    result = subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "site.yaml")],
                            capture_output=True, text=True, cwd=tmp_path, check=True,
                            timeout=60)
    assert result.stdout.splitlines()[-1] == "(100000, 50, 100) True"


LOADED_AFTER = """\
import sys
from crate_deploy.cli import main
try:
    main({args!r})
except SystemExit as exc:
    print(exc.code, "click" in sys.modules, file=sys.stderr)
"""


def test_a_plain_render_runs_without_click(tmp_path: Path) -> None:
    """The full render of a command line the fast path read, and a plain validate, do not
    import click (~10 ms of either); --all-hosts and --help go through it."""
    environment = {**os.environ, "CRATE_DEPLOY_FAST_PATH": "0"}
    for args, expected in (
            (["render", str(EXAMPLES / "site.yaml"), "-o", str(tmp_path / "a")], "0 False"),
            (["render", str(EXAMPLES / "site.yaml"), str(tmp_path / "b"), "--check"], "1 False"),
            (["render", str(EXAMPLES / "multi-host.yaml"), "--all-hosts", "-o",
              str(tmp_path / "c")], "0 True"),
            (["validate", str(EXAMPLES / "site.yaml")], "0 False"),
            (["validate", str(EXAMPLES / "site.yaml"), str(EXAMPLES / "minimal.yaml")],
             "0 False"),
            (["validate", "--help"], "0 True")):
        result = subprocess.run([sys.executable, "-c", LOADED_AFTER.format(args=args)],
                                capture_output=True, text=True, env=environment, cwd=tmp_path,
                                check=False, timeout=60)
        assert result.stderr.splitlines()[-1] == expected, result.stderr


def test_render_refuses_what_click_refuses(run_cli: Callable[..., Result],
                                          tmp_path: Path) -> None:
    """A SITE that is a directory, a DIRECTORY that is a file: click's own words, exit 2."""
    (tmp_path / "a-file").write_text("")
    result = run_cli("render", tmp_path)
    assert (result.code, result.out) == (2, "")
    assert "is a directory" in result.err
    result = run_cli("render", EXAMPLES / "site.yaml", tmp_path / "a-file")
    assert (result.code, result.out) == (2, "")
    assert "is a file" in result.err
    result = run_cli("validate", EXAMPLES / "site.yaml", tmp_path)
    assert (result.code, result.out) == (2, "")
    assert "is a directory" in result.err


def test_file_statuses_are_coloured_on_a_terminal_only(tmp_path: Path) -> None:
    import pty

    def render(directory: str, *, terminal: bool) -> str:
        primary, secondary = pty.openpty()
        try:
            stdout = secondary if terminal else subprocess.PIPE
            process = subprocess.Popen(
                [sys.executable, "-m", "crate_deploy", "render", str(EXAMPLES / "site.yaml"),
                 "-o", str(tmp_path / directory)], stdout=stdout, stderr=subprocess.DEVNULL,
                cwd=tmp_path)
            os.close(secondary)
            if not terminal:
                out, _ = process.communicate(timeout=60)
                return out.decode()
            output = b""
            while chunk := _read_terminal(primary):
                output += chunk
            process.wait(timeout=60)
            return output.decode()
        finally:
            os.close(primary)

    coloured = render("tty", terminal=True)
    assert f"\x1b[32m  created\x1b[0m  {tmp_path / 'tty'}/crate.env" in coloured
    plain = render("pipe", terminal=False)
    assert f"  created  {tmp_path / 'pipe'}/crate.env\n" in plain
    assert "\x1b" not in plain


def _read_terminal(descriptor: int) -> bytes:
    try:
        return os.read(descriptor, 65536)
    except OSError:  # EIO: the program closed its end
        return b""


def _render_program(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    """`crate-deploy render ARGS` as the program, the full render (not the fast path)."""
    return subprocess.run([sys.executable, "-m", "crate_deploy", "render", *args],
                          capture_output=True, cwd=tmp_path, timeout=60, check=False,
                          env={**os.environ, "CRATE_DEPLOY_FAST_PATH": "0", **env})


def test_a_path_that_cannot_be_looked_at_gets_the_command_s_own_error(tmp_path: Path) -> None:
    """A name too long to stat: click passes it on and render says what is wrong, with its
    exit code; the direct path once died with an unexpected error (exit 3)."""
    long_name = "a" * 300
    result = _render_program(tmp_path, long_name)
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode().startswith(
        f"{long_name}:1:1: cannot read the site file: File name too long")
    result = _render_program(tmp_path, str(EXAMPLES / "site.yaml"), long_name)
    assert result.returncode == 1
    assert result.stderr.decode().endswith(
        f"crate-deploy: error: cannot write into {long_name}: File name too long\n")


def test_a_report_in_utf8_reaches_a_stream_of_another_encoding(tmp_path: Path) -> None:
    result = _render_program(tmp_path, str(EXAMPLES / "site.yaml"), "out-ñ",
                             PYTHONIOENCODING="ascii")
    assert result.returncode == 0, result.stderr
    assert "  created  out-ñ/crate.env\n".encode() in result.stdout


def test_a_reader_that_went_away_ends_the_render_quietly(tmp_path: Path) -> None:
    """stdout a pipe nobody reads any more (`| head -1` after its line): exit 1 and not a
    word more than the render says anyway, as click ends its commands; the files are
    written."""
    said = _render_program(tmp_path, str(EXAMPLES / "site.yaml"), "elsewhere").stderr
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "crate_deploy", "render", str(EXAMPLES / "site.yaml"),
             "out"], stdout=writer, stderr=subprocess.PIPE, cwd=tmp_path, timeout=60,
            check=False, env={**os.environ, "CRATE_DEPLOY_FAST_PATH": "0"})
    finally:
        os.close(writer)
    assert (result.returncode, result.stderr) == (1, said)
    assert (tmp_path / "out" / "crate.env").exists()


def test_ctrl_c_during_a_render_says_what_click_says(tmp_path: Path) -> None:
    import signal
    import time

    os.mkfifo(tmp_path / "site.yaml")  # the render waits, opening it
    process = subprocess.Popen([sys.executable, "-m", "crate_deploy", "render", "site.yaml",
                                "out"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=tmp_path, env={**os.environ, "CRATE_DEPLOY_FAST_PATH": "0"})
    wchan = Path(f"/proc/{process.pid}/wchan")
    deadline = time.monotonic() + 60
    while wchan.read_text() != "wait_for_partner" and time.monotonic() < deadline:
        time.sleep(0.05)  # until it is blocked opening the FIFO, well inside main()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert (process.returncode, err) == (130, b"\naborted\n")


def test_escape_sequences_never_reach_a_stream_that_is_not_a_terminal(tmp_path: Path) -> None:
    result = _render_program(tmp_path, str(EXAMPLES / "site.yaml"), "out\x1b[2~x")
    assert result.returncode == 0, result.stderr
    assert b"  created  outx/crate.env\n" in result.stdout
    assert b"\x1b" not in result.stdout + result.stderr
