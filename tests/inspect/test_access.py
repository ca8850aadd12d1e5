"""inspect/access.py: can a service's user run its program and enter its directory, as the
kernel would decide (mode bits, symlinks, `#!` interpreters), and who that user is."""

from __future__ import annotations

import grp
import os
import pwd
import tempfile
from pathlib import Path

from crate_deploy.inspect.access import (
    Identity,
    directory_problem,
    executable_problem,
    identity_for,
)

NOBODY = Identity(65534, frozenset({65534}), "nobody")


def _script(path: Path, interpreter: str, mode: int = 0o755) -> Path:
    path.write_text(f"#!{interpreter}\nprint('hi')\n", encoding="utf-8")
    path.chmod(mode)
    return path


def test_a_script_whose_interpreter_hides_behind_a_private_directory() -> None:
    with tempfile.TemporaryDirectory() as name:  # (pytest's tmp_path is in a 0700 one)
        _check_private_interpreter(Path(name))


def _check_private_interpreter(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    python = _script(private / "python", "/bin/sh")
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(python)
    celery = _script(venv / "celery", str(venv / "python"))
    problem = executable_problem(str(celery), NOBODY)
    assert problem is not None
    assert problem.endswith(f"nobody cannot search {private} (mode 0700, owner "
                            f"{Path(private).owner()})")
    assert f"{venv / 'python'} links to {python}" in problem
    me = Identity(os.geteuid(), frozenset({os.getegid()}), "me")
    assert executable_problem(str(celery), me) is None


def test_missing_and_unexecutable_programs(tmp_path: Path) -> None:
    me = Identity(os.geteuid(), frozenset({os.getegid()}), "me")
    missing = executable_problem(str(tmp_path / "nope" / "celery"), me)
    assert missing is not None and "No such file or directory" in missing
    plain = tmp_path / "plain"
    plain.write_text("data", encoding="utf-8")
    plain.chmod(0o644)
    said = executable_problem(str(plain), me)
    assert said is not None and "may not execute" in said and "mode 0644" in said
    assert directory_problem(tmp_path / "nope", me) is not None
    assert directory_problem(tmp_path, me) is None


def test_who_runs_a_service_under_systemd_and_in_the_foreground() -> None:
    dynamic = identity_for(None, None, systemd=True)
    assert dynamic.name == "the DynamicUser= of the units" and not dynamic.groups
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    under_systemd = identity_for("nobody", group, systemd=True)
    assert under_systemd.uid == nobody.pw_uid
    assert set(os.getgrouplist("nobody", nobody.pw_gid)) <= under_systemd.groups
    foreground = identity_for("nobody", group, systemd=False)
    if os.geteuid() == 0:  # root switches to User=, with its one group
        assert (foreground.uid, foreground.groups) == (nobody.pw_uid, frozenset({nobody.pw_gid}))
    else:  # anyone else runs the fleet as themselves
        assert foreground.uid == os.geteuid()
