"""Broken and hostile site files: each one is refused cleanly, and nothing is written.

The corpus is tests/hostile/*.yaml (one small file per case, named for what it does,
most of them tests/conftest.py's MINIMAL site with one thing wrong) plus GENERATED below:
the cases made of bytes that do not belong in a text file (NUL, Latin-1, control
characters, a 1 MiB file) are built here from a table rather than committed.
tests/hostile/EXPECTED.txt pins the first problem line of every file case; GENERATED
pins its own.

For every case, `validate` and `render` (into a new directory, into an existing
rendered directory, with --diff and with --check) must exit 2 with one
FILE:LINE:COL line per problem and `N error(s): nothing was written`, print no
traceback and change nothing on disk. Most cases run in-process (crate_deploy.cli.main);
SUBPROCESS_CASES also run the real program.

Cases listed in BUGS show a bug in crate_deploy/ and are strict xfails: fix the bug,
then remove the entry (and tighten the case's EXPECTED line if it ends in " ...").
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import MINIMAL, ROOT, Result

HOSTILE = Path(__file__).resolve().parent.parent / "hostile"
SITE = textwrap.dedent(MINIMAL)
SUMMARY = re.compile(r"(\d+) error\(s\): nothing was written")
POSITION = re.compile(r"(\d+):(\d+): ")
LITERAL_PASSWORD = "hunter2"  # every case with a literal password uses this one


def _header(name: str, what: str) -> bytes:
    return f"# {name}: {what}\n".encode()


def _minimal(old: str, new: str) -> bytes:
    assert old in SITE
    return SITE.replace(old, new).encode("utf-8")


# name -> (bytes, number of errors, first problem line without "FILE:").
GENERATED: dict[str, tuple[bytes, int, str]] = {
    "nul-byte.yaml": (
        _header("nul-byte", "a NUL inside the project name")
        + _minimal("project: demo", "project: de\0mo"),
        1, "2:12: control character U+0000 is not allowed in a site file"),
    "nul-in-key.yaml": (
        _header("nul-in-key", "a NUL inside a key") + _minimal("project:", "pro\0ject:"),
        1, "2:4: control character U+0000 is not allowed in a site file"),
    "latin1-bytes.yaml": (
        _header("latin1-bytes", "an app name saved as Latin-1")
        + SITE.encode().replace(b"app: demo.app", b"app: d\xe9mo.app"),
        1, "3:7: the site file is not valid UTF-8 (byte 0xe9)"),
    "utf16-with-bom.yaml": (
        ("# utf16-with-bom: the site saved as UTF-16\n" + SITE).encode("utf-16"),
        1, "1:1: the site file is not valid UTF-8 (byte 0xff)"),
    "overlong-utf8.yaml": (
        _header("overlong-utf8", "an overlong two-byte encoding of '/'")
        + SITE.encode().replace(b"/usr/bin", b"/usr\xc0\xafbin"),
        1, "4:13: the site file is not valid UTF-8 (byte 0xc0)"),
    "truncated-utf8.yaml": (
        _header("truncated-utf8", "a multibyte sequence cut short at the end of the file")
        + SITE.encode() + b"user: \xe2\x82",
        1, "10:7: the site file is not valid UTF-8 (byte 0xe2)"),
    "escape-character.yaml": (
        _header("escape-character", "an ANSI colour sequence in a value")
        + _minimal("project: demo", "project: \x1b[31mdemo"),
        1, "2:10: control character U+001B is not allowed in a site file"),
    "bell-character.yaml": (
        _header("bell-character", "BEL in a comment") + SITE.encode() + b"# ding\x07\n",
        1, "10:7: control character U+0007 is not allowed in a site file"),
    "form-feed.yaml": (
        _header("form-feed", "a form feed between keys") + SITE.encode() + b"\x0c\n",
        1, "10:1: control character U+000C is not allowed in a site file"),
    "vertical-tab.yaml": (
        _header("vertical-tab", "a vertical tab in a value")
        + _minimal("name: default", "name: def\x0bault"),
        1, "8:14: control character U+000B is not allowed in a site file"),
    "del-character.yaml": (
        _header("del-character", "DEL in a value")
        + _minimal("queues: [celery]", "queues: [cel\x7fery]"),
        1, "9:17: control character U+007F is not allowed in a site file"),
    "c1-control-nel.yaml": (
        _header("c1-control-nel", "U+0085 NEXT LINE, a line break to YAML 1.1")
        + _minimal("name: default", "name: default\x85ExecStartPre=/bin/sh"),
        1, "8:18: control character U+0085 is not allowed in a site file"),
    "c1-control-csi.yaml": (
        _header("c1-control-csi", "U+009B, the 8-bit CSI")
        + _minimal("project: demo", "project: \x9b31mdemo"),
        1, "2:10: control character U+009B is not allowed in a site file"),
    "line-separator-hides-key.yaml": (
        _header("line-separator-hides-key", "U+2028 is a line break to YAML but not to "
                "most editors: the comment hides `user: root`")
        + SITE.encode() + "# the service user is set by ops \u2028user: root\n".encode(),
        1, "10:34: control character U+2028 is not allowed in a site file"),
    "alias-size-bomb.yaml": (
        _header("alias-size-bomb", "41 copies of a 200,000-character text: few values, "
                "8 MB once expanded")
        + b"project: &x '" + b"A" * 200_000 + b"'\nworkers: [" + b"*x, " * 40 + b"]\n",
        1, "2:10: workers[19]: expands to more than 4194304 characters of text (an alias bomb?)"),
    "huge-file.yaml": (
        _header("huge-file", "more than 1 MiB") + SITE.encode() + b"#" * (1024 * 1024),
        1, "1:1: the site file is larger than 1024 KiB"),
}

BUGS: dict[str, str] = {}

# A handful of cases that also run as the real program (python -m crate_deploy).
SUBPROCESS_CASES = ("duplicate-key.yaml", "alias-bomb.yaml", "nul-byte.yaml",
                    "latin1-bytes.yaml", "literal-password-in-broker-url.yaml",
                    "flower-on-all-interfaces-without-auth.yaml", "huge-file.yaml",
                    "int-tag-on-text.yaml", "recursive-alias-as-key.yaml")


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    errors: int
    first: str


def read_expected() -> dict[str, tuple[int, str]]:
    expected: dict[str, tuple[int, str]] = {}
    for line in (HOSTILE / "EXPECTED.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, errors, first = line.split(" | ", 2)
        assert name not in expected, f"{name} is listed twice in EXPECTED.txt"
        expected[name] = (int(errors), first)
    return expected


def all_cases() -> list[Case]:
    expected = read_expected()
    cases = [Case(name, (HOSTILE / name).read_bytes(), *expected[name])
             for name in sorted(expected) if (HOSTILE / name).is_file()]
    cases += [Case(name, *entry) for name, entry in GENERATED.items()]
    return cases


CASES = {case.name: case for case in all_cases()}


def params(names: list[str] | tuple[str, ...]) -> list[object]:
    return [pytest.param(CASES[name], id=name, marks=[
        pytest.mark.xfail(strict=True, reason=BUGS[name])] if name in BUGS else [])
        for name in names]


def place(case: Case, tmp_path: Path) -> Path:
    """Copy the case into a folder whose name has a space (paths in messages must cope)."""
    folder = tmp_path / "site dir"
    folder.mkdir()
    path = folder / case.name
    path.write_bytes(case.data)
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str | None]]:
    """Every entry below root: mode, size, mtime (ns) and, for files, a content hash."""
    state = {}
    for path in sorted(root.rglob("*")):
        status = path.lstat()
        digest = (hashlib.sha256(path.read_bytes()).hexdigest()
                  if path.is_file() and not path.is_symlink() else None)
        state[str(path.relative_to(root))] = (status.st_mode, status.st_size,
                                              status.st_mtime_ns, digest)
    return state


def check_refusal(case: Case, path: Path, code: int, out: str, err: str) -> None:
    """Exit 2, nothing on stdout, one FILE:LINE:COL line per problem, then the summary."""
    assert "Traceback" not in err, err
    assert code == 2, (code, out, err)
    assert out == ""
    lines = err.splitlines()
    assert lines, "nothing on stderr"
    summary = SUMMARY.fullmatch(lines[-1])
    assert summary, f"last line is not the summary: {lines[-1]!r}"
    prefix = f"{path}:"
    last_line = case.data.count(b"\n") + 1
    problems = []
    for line in lines[:-1]:
        assert line.startswith(prefix), f"not a FILE:LINE:COL: line: {line!r}"
        problem = line.removeprefix(prefix)
        position = POSITION.match(problem)
        assert position, f"no LINE:COL: in {line!r}"
        assert 1 <= int(position[1]) <= last_line and int(position[2]) >= 1, line
        problems.append(problem)
    errors = [problem for problem in problems if " warning: " not in problem]
    assert int(summary[1]) == len(errors), err
    expected = case.first.replace("{DIR}", str(path.parent.resolve()))
    if expected.endswith(" ..."):
        assert problems[0].startswith(expected.removesuffix(" ...")), problems[0]
    else:
        assert problems[0] == expected
    assert len(errors) == case.errors, err
    if LITERAL_PASSWORD.encode() in case.data:
        assert LITERAL_PASSWORD not in err, "a literal password from the site is echoed"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output directory holding a render of a valid site (copied into each test)."""
    from crate_deploy.cli import main

    root = tmp_path_factory.mktemp("rendered")
    site = root / "site.yaml"
    site.write_text(SITE + "beat: {enabled: true}\nflower: {enabled: true}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        main(["render", str(site), "-o", str(root / "out")])
    assert exited.value.code == 0
    return root / "out"


# --- the corpus itself -------------------------------------------------------------------


def test_corpus_is_complete_and_pinned() -> None:
    expected = read_expected()
    files = {path.name for path in HOSTILE.glob("*.yaml")}
    assert files == set(expected), "every tests/hostile/*.yaml needs one EXPECTED.txt line"
    assert not files & set(GENERATED)
    assert len(files) >= 50
    assert set(BUGS) <= set(CASES)
    assert all(name.endswith(".yaml") and re.fullmatch(r"[a-z0-9.-]+", name) for name in CASES)


# --- every case, in-process ------------------------------------------------------------


@pytest.mark.parametrize("case", params(sorted(CASES)))
def test_hostile_site_is_refused(case: Case, tmp_path: Path, rendered: Path,
                                 run_cli: Callable[..., Result],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = place(case, tmp_path)
    existing = tmp_path / "existing"
    shutil.copytree(rendered, existing, copy_function=shutil.copy2)
    monkeypatch.chdir(tmp_path)  # `render --check` defaults to ./crate-deploy-out
    before = snapshot(tmp_path)
    new = tmp_path / "new"
    for args in (["validate", path], ["render", path, "-o", new],
                 ["render", path, "-o", existing], ["render", path, "-o", existing, "--diff"],
                 ["render", path, "--check"]):
        result = run_cli(*args)
        check_refusal(case, path, result.code, result.out, result.err)
    assert not new.exists()
    assert snapshot(tmp_path) == before, "an invalid site changed something on disk"


# --- a handful, as the real program ------------------------------------------------------


def run_program(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "crate_deploy", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize("case", params(SUBPROCESS_CASES))
def test_hostile_site_is_refused_by_the_program(case: Case, tmp_path: Path,
                                                rendered: Path) -> None:
    path = place(case, tmp_path)
    existing = tmp_path / "existing"
    shutil.copytree(rendered, existing, copy_function=shutil.copy2)
    before = snapshot(tmp_path)
    new = tmp_path / "new"
    commands: list[list[str | Path]] = [["validate", path], ["render", path, "-o", new],
                                        ["render", path, "-o", existing, "--diff"]]
    for args in commands:
        result = run_program(*args, cwd=tmp_path)
        check_refusal(case, path, result.returncode, result.stdout, result.stderr)
    assert not new.exists()
    assert snapshot(tmp_path) == before


def test_invalid_site_leaves_an_existing_output_directory_untouched(tmp_path: Path) -> None:
    """The real program: render valid, then invalid; the directory is byte- and mtime-equal."""
    site = tmp_path / "site.yaml"
    site.write_text(SITE + "flower: {enabled: true}\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run_program("render", site, "-o", out, cwd=tmp_path).returncode == 0
    (out / "local-notes.txt").write_text("not ours\n", encoding="utf-8")
    before = snapshot(tmp_path)
    site.write_text(SITE.replace("name: default", "name: Default") + "flower: {port: 0}\n",
                    encoding="utf-8")
    after_edit = snapshot(tmp_path)
    result = run_program("render", site, "-o", out, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.endswith("2 error(s): nothing was written\n")
    assert snapshot(tmp_path) == after_edit
    assert {key: value for key, value in after_edit.items() if key != "site.yaml"} == {
        key: value for key, value in before.items() if key != "site.yaml"}


def test_an_output_directory_with_a_percent_sign(tmp_path: Path,
                                                 run_cli: Callable[..., Result]) -> None:
    from crate_deploy.systemd.units import load_service

    site = tmp_path / "site.yaml"
    site.write_text(SITE + "flower: {enabled: true}\n", encoding="utf-8")
    out = tmp_path / "out 50%h"
    result = run_cli("render", site, "-o", out)
    if result.code == 2:  # refusing is fine too, as long as nothing is written
        assert not out.exists()
        return
    assert result.code == 0, result.err
    for unit in sorted((out / "systemd").glob("*.service")):
        service = load_service(unit, {})
        assert service.environment["PYTHONPATH"] == str(out.resolve())
