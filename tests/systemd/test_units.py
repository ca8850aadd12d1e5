"""Tests for crate_deploy.systemd.units: unit files read the way systemd reads them."""

from __future__ import annotations

import math
import re
import signal
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crate_deploy.systemd.units import (
    ExecCommand,
    UnitError,
    load_service,
    parse_environment_assignments,
    parse_environment_file,
    parse_exec_line,
    parse_signal,
    parse_time_span,
    parse_unit,
    quote_exec_argument,
    split_command_line,
)

# --- unit files ---------------------------------------------------------------------


def test_parse_unit_keeps_sections_and_repeated_keys_in_order() -> None:
    unit = parse_unit(
        textwrap.dedent(
            """\
            # a comment
            ; another comment
            [Unit]
            Description = Celery worker

            [Service]
            Environment=A=1
            Environment=B=2
            [Service]
            Environment=C=3
            """
        ),
        "w.service",
    )
    assert unit.sections == {
        "Unit": [("Description", "Celery worker")],
        "Service": [("Environment", "A=1"), ("Environment", "B=2"), ("Environment", "C=3")],
    }
    assert unit.values("Service", "Environment") == ["A=1", "B=2", "C=3"]
    assert unit.value("Service", "Environment") == "C=3"
    assert unit.value("Service", "Missing") is None


def test_empty_assignment_resets_the_key() -> None:
    unit = parse_unit("[Service]\nEnvironment=A=1\nUser=x\nEnvironment=\nEnvironment=B=2\n", "u")
    assert unit.sections["Service"] == [("User", "x"), ("Environment", "B=2")]


def test_backslash_continues_lines_and_skips_comment_lines_inside() -> None:
    text = "[Service]\nExecStart=/bin/echo a \\\n# ignored\n; ignored too\n    b\nUser=x\n"
    assert parse_unit(text, "u").value("Service", "ExecStart") == "/bin/echo a      b"


def test_even_backslashes_do_not_continue_and_inline_hash_is_not_a_comment() -> None:
    unit = parse_unit("[Service]\nA=x\\\\\nB=y # not a comment\n", "u")
    assert unit.sections["Service"] == [("A", "x\\\\"), ("B", "y # not a comment")]


def test_crlf_and_byte_order_mark() -> None:
    unit = parse_unit("\ufeff[Service]\r\nUser=celery\r\n", "u")
    assert unit.value("Service", "User") == "celery"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("User=x\n", "u:1: assignment outside of any [Section]"),
        ("[Service]\nno equals sign\n", "u:2: expected Key=value"),
        ("[Service]\n=value\n", "u:2: expected Key=value"),
        ("[Service\n", "u:1: invalid section header"),
    ],
)
def test_parse_unit_refuses_what_systemd_would_skip(text: str, message: str) -> None:
    with pytest.raises(UnitError, match=re.escape(message)):
        parse_unit(text, "u")


# --- command lines --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "argv"),
    [
        ("/bin/echo a  b", ["/bin/echo", "a", "b"]),
        ('/bin/echo "a b" \'c "d"\'', ["/bin/echo", "a b", 'c "d"']),
        ('/bin/echo pre"quoted part"post', ["/bin/echo", "prequoted partpost"]),
        ('/bin/echo "" x', ["/bin/echo", "", "x"]),
        (r'/bin/echo "say \"hi\"" back\\slash', ["/bin/echo", 'say "hi"', "back\\slash"]),
        (r"/bin/echo \n\t\s \x41\102 \u00e9\U0001F600", ["/bin/echo", "\n\t ", "AB", "é😀"]),
        (r"/bin/echo \xc3\xa9", ["/bin/echo", "é"]),  # \x escapes are raw bytes
        (r"/bin/echo \d+ \x4", ["/bin/echo", r"\d+", r"\x4"]),  # unknown: kept, as systemd
        (r"/bin/echo \; ';'", ["/bin/echo", ";", ";"]),
        ("/bin/echo 100%% %%i", ["/bin/echo", "100%", "%i"]),
        ("/bin/echo trailing%", ["/bin/echo", "trailing%"]),
        ("/bin/echo $$HOME cost$$", ["/bin/echo", "$HOME", "cost$"]),
        ("celery -A app", ["celery", "-A", "app"]),
    ],
)
def test_split_command_line(value: str, argv: list[str]) -> None:
    assert split_command_line(value, {}) == argv


def test_variables_expand_like_systemd() -> None:
    env = {"OPTS": "--pool prefork  -c 4", "QUOTED": 'a "b c"', "EMPTY": "", "NAME": "w1"}
    value = '/bin/run $OPTS "$QUOTED" ${OPTS} x${NAME}y $EMPTY $UNSET ${UNSET}z ${NAME:-d}'
    assert split_command_line(value, env) == [
        "/bin/run",
        "--pool", "prefork", "-c", "4",  # $VAR alone: split on whitespace
        "a", "b c",  # ... with quotes honoured, even when the word was quoted
        "--pool prefork  -c 4",  # ${VAR}: one word, as is
        "xw1y",
        "z",  # $EMPTY and $UNSET vanish; ${UNSET} is empty
        "${NAME:-d}",  # systemd has no ${VAR:-default} in command lines
    ]  # fmt: skip


def test_prefixes_are_returned_separately() -> None:
    assert parse_exec_line("-/bin/false x") == ExecCommand(("/bin/false", "x"), True, True)
    command = parse_exec_line(":/bin/echo $HOME")
    assert command == ExecCommand(("/bin/echo", "$HOME"), False, False)
    assert command.expand({"HOME": "/root"}) == ["/bin/echo", "$HOME"]
    assert parse_exec_line('"-/bin/true"').ignore_failure  # prefixes follow unquoting


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/bin/echo %i", "unit specifier %i"),
        ("/bin/echo %n.log", "unit specifier %n"),
        ("/usr/bin/%H", "unit specifier %H"),
        (r"/bin/echo \x25i", "unit specifier %i"),  # specifiers apply after unescaping
        ("@/bin/echo name", "prefix '@' is not supported"),
        ("+/bin/echo", "prefix '+' is not supported"),
        ("!!/bin/echo", "prefix '!' is not supported"),
        ("/bin/echo a ; /bin/echo b", "';' separates several commands"),
        ("/bin/echo 'open", "unbalanced quoting"),
        ("bin/echo", "neither an absolute path nor a bare file name"),
        ("/usr/bin/", "neither an absolute path nor a bare file name"),
        ("", "empty command line"),
        ("/bin/echo $FOO.bar", "does not name a valid environment variable"),
    ],
)
def test_split_command_line_rejects(value: str, message: str) -> None:
    with pytest.raises(UnitError, match=re.escape(message)):
        split_command_line(value, {"FOO": "x"})


ARGUMENT_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12
)


@given(st.lists(ARGUMENT_TEXT))
def test_quote_exec_argument_round_trips_through_a_unit_file(arguments: list[str]) -> None:
    line = " ".join(["/usr/bin/env", *map(quote_exec_argument, arguments)])
    unit = parse_unit(f"[Service]\nExecStart={line}\n", "u")
    exec_start = unit.value("Service", "ExecStart")
    assert exec_start is not None
    assert split_command_line(exec_start, {"HOME": "/root"}) == ["/usr/bin/env", *arguments]


# --- environment --------------------------------------------------------------------


def test_environment_assignments() -> None:
    value = r"""A=1 "B=two words" C=tab\there D=100%% 'E=$HOME' "F=say \"hi\"" G="""
    assert parse_environment_assignments(value) == {
        "A": "1", "B": "two words", "C": "tab\there", "D": "100%", "E": "$HOME",
        "F": 'say "hi"', "G": "",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("NOEQUALS", "is not a NAME=value assignment"),
        ("1A=x", "is not a NAME=value assignment"),
        ("A=%i", "unit specifier %i"),
        (r"A=\q", "unknown escape sequence"),
        ('"A=open', "unbalanced quoting"),
    ],
)
def test_environment_assignments_reject(value: str, message: str) -> None:
    with pytest.raises(UnitError, match=re.escape(message)):
        parse_environment_assignments(value)


def test_environment_file_follows_systemd_rules() -> None:
    text = (
        "# comment\n"
        "  ; comment with = sign\n"
        "PLAIN=value\n"
        "  SPACED  =  padded value  \n"
        'DOUBLE="a \\"q\\" \\$x \\\\ \\n"\n'  # only \" \\ \` \$ lose the backslash
        "SINGLE='no $VAR or %i or \\n here'\n"
        "JOINED='a' \"b\"  c\n"
        "BARE_ESCAPE=a\\ b\\#c\\\n"
        "   continued\n"
        "MULTI='line1\nline2'\n"
        "HASH=x # not a comment\n"
        "EMPTY=\n"
        "PLAIN=overridden\n"
        "LAST=no newline"
    )
    assert parse_environment_file(text, "celery.env") == {
        "PLAIN": "overridden",
        "SPACED": "padded value",
        "DOUBLE": 'a "q" $x \\ \\n',
        "SINGLE": "no $VAR or %i or \\n here",
        "JOINED": "abc",
        "BARE_ESCAPE": "a b#c   continued",
        "MULTI": "line1\nline2",
        "HASH": "x # not a comment",
        "EMPTY": "",
        "LAST": "no newline",
    }


def test_environment_file_with_crlf_line_ends() -> None:
    assert parse_environment_file("A=1\r\nB='2'\r\n", "f") == {"A": "1", "B": "2"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A=1\nJUST_A_NAME\n", "celery.env:2: expected NAME=value"),
        ("A=1\n\nexport B=2\n", "celery.env:3: 'export B' is not a valid variable name"),
        ("9LIVES=1\n", "celery.env:1: '9LIVES' is not a valid"),
        ("A=1\nB='never closed\n", "celery.env:2: unterminated ' quote"),
        ('A="never closed', 'celery.env:1: unterminated " quote'),
    ],
)
def test_environment_file_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(UnitError, match=re.escape(message)):
        parse_environment_file(text, "celery.env")


# --- values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90", 90.0), ("90s", 90.0), ("5min", 300.0), ("1min 30s", 90.0), ("1min30s", 90.0),
        ("2 h", 7200.0), ("1.5s", 1.5), ("100ms", 0.1), ("0", 0.0), ("1d 1w", 691200.0),
        ("infinity", math.inf), (" 10sec ", 10.0),
    ],
)  # fmt: skip
def test_parse_time_span(value: str, seconds: float) -> None:
    assert parse_time_span(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "s", "-5s", "5 parsecs", "1min x", "inf"])
def test_parse_time_span_rejects(value: str) -> None:
    with pytest.raises(UnitError, match="invalid time span"):
        parse_time_span(value)


@pytest.mark.parametrize(
    ("value", "number"), [("SIGTERM", 15), ("TERM", 15), ("SIGQUIT", 3), ("9", 9)]
)
def test_parse_signal(value: str, number: int) -> None:
    assert parse_signal(value) == number


@pytest.mark.parametrize("value", ["SIGNOPE", "999", ""])
def test_parse_signal_rejects(value: str) -> None:
    with pytest.raises(UnitError, match="unknown signal"):
        parse_signal(value)


# --- services -----------------------------------------------------------------------


def write_unit(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return path


def test_load_service_reads_a_celery_worker_unit(tmp_path: Path) -> None:
    (tmp_path / "celery.env").write_text("CELERY_APP=proj\nQUEUE=from-file\nOPTS='-O fair'\n")
    unit = write_unit(
        tmp_path,
        "crate-worker-default.service",
        f"""\
        [Unit]
        Description=Celery worker (default pool)
        StartLimitIntervalSec=60
        StartLimitBurst=3

        [Service]
        Type=exec
        User=celery
        Group=celery
        WorkingDirectory={tmp_path}
        Environment="QUEUE=default" PYTHONUNBUFFERED=1
        Environment=LOGLEVEL=info
        EnvironmentFile={tmp_path}/celery.env
        EnvironmentFile=-{tmp_path}/missing.env
        ExecStart=/srv/venv/bin/celery -A ${{CELERY_APP}} worker -Q ${{QUEUE}} \\
            --loglevel=${{LOGLEVEL}} $OPTS --hostname=default@%%h
        Restart=on-failure
        RestartSec=2s
        TimeoutStopSec=10min
        KillSignal=SIGTERM
        KillMode=mixed
        """,
    )
    service = load_service(unit, {"PATH": "/usr/bin", "LOGLEVEL": "debug"})
    assert service.name == "crate-worker-default"
    assert service.argv == [
        "/srv/venv/bin/celery", "-A", "proj", "worker", "-Q", "from-file",
        "--loglevel=info", "-O", "fair", "--hostname=default@%h",
    ]  # fmt: skip
    assert service.environment == {
        "PATH": "/usr/bin", "LOGLEVEL": "info", "QUEUE": "from-file", "PYTHONUNBUFFERED": "1",
        "CELERY_APP": "proj", "OPTS": "-O fair",
    }  # fmt: skip
    assert service.environment_files == [
        (tmp_path / "celery.env", False),
        (tmp_path / "missing.env", True),
    ]
    assert (service.user, service.group) == ("celery", "celery")
    assert service.working_directory == tmp_path
    assert (service.restart, service.restart_sec) == ("on-failure", 2)
    assert service.timeout_stop_sec == 600
    assert (service.kill_signal, service.kill_mode) == (signal.SIGTERM, "mixed")
    assert (service.start_limit_burst, service.start_limit_interval_sec) == (3, 60)
    assert service.ignore_failure is False


def test_load_service_defaults_are_systemds(tmp_path: Path) -> None:
    path = write_unit(tmp_path, "beat.service", "[Service]\nExecStart=/bin/true\n")
    service = load_service(path, {})
    assert service.argv == ["/bin/true"]
    assert service.environment == {}
    assert service.working_directory is None
    assert (service.user, service.group) == (None, None)
    assert (service.restart, service.restart_sec, service.timeout_stop_sec) == ("no", 0.1, 90.0)
    assert (service.kill_signal, service.kill_mode) == (signal.SIGTERM, "control-group")
    assert (service.start_limit_burst, service.start_limit_interval_sec) == (5, 10.0)


def test_load_service_timeouts_and_legacy_keys(tmp_path: Path) -> None:
    body = (
        "[Service]\nExecStart=-/bin/true\nTimeoutSec=5\nTimeoutStopSec=0\nKillSignal=INT\n"
        "StartLimitInterval=30\nStartLimitBurst=2\nWorkingDirectory=-/does/not/exist\n"
    )
    service = load_service(write_unit(tmp_path, "a.service", body), {})
    assert service.timeout_stop_sec == math.inf  # TimeoutStopSec=0 means no timeout
    assert service.kill_signal == signal.SIGINT
    assert (service.start_limit_burst, service.start_limit_interval_sec) == (2, 30.0)
    assert service.working_directory is None
    assert service.ignore_failure is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("EnvironmentFile=/nope/celery.env", "EnvironmentFile=/nope/celery.env does not exist"),
        ("EnvironmentFile=relative.env", "must be an absolute path"),
        ("Restart=sometimes", "Restart=sometimes: expected one of no, on-success"),
        ("RestartSec=soon", "RestartSec=soon: invalid time span"),
        ("KillSignal=SIGNOPE", "KillSignal=SIGNOPE: unknown signal"),
        ("KillMode=all", "KillMode=all: expected one of"),
        ("StartLimitBurst=many", "StartLimitBurst=many: expected a whole number"),
        ("Type=forking", "Type=forking is not supported"),
        ("ExecStartPre=/bin/true", "ExecStartPre= is not supported"),
        ("ExecStart=/bin/false", "more than one ExecStart="),
        ("ExecStart=\nUser=x", "no ExecStart="),
        ("WorkingDirectory=~", "WorkingDirectory=~: must be an absolute path"),
        ("User=%u", "unit specifier %u"),
        ("ExecStart=\nExecStart=/bin/echo $A.b", "$A.b' does not name a valid environment"),
    ],
)
def test_load_service_rejects(tmp_path: Path, body: str, message: str) -> None:
    path = write_unit(tmp_path, "w1.service", f"[Service]\nExecStart=/bin/true\n{body}\n")
    with pytest.raises(UnitError, match=re.escape(message)) as caught:
        load_service(path, {})
    assert str(path) in str(caught.value)  # the message names the unit


def test_load_service_names_a_bad_environment_file(tmp_path: Path) -> None:
    (tmp_path / "bad.env").write_text("OK=1\nexport BAD=2\n")
    body = f"[Service]\nExecStart=/bin/true\nEnvironmentFile={tmp_path}/bad.env\n"
    path = write_unit(tmp_path, "w.service", body)
    with pytest.raises(UnitError, match=re.escape(f"{tmp_path}/bad.env:2: 'export BAD'")):
        load_service(path, {})


def test_load_service_needs_a_readable_service_file(tmp_path: Path) -> None:
    with pytest.raises(UnitError, match=r"not a \.service unit"):
        load_service(tmp_path / "worker.timer", {})
    with pytest.raises(UnitError, match="cannot read unit file"):
        load_service(tmp_path / "absent.service", {})


def test_unset_environment_applies_after_the_environment_files(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("BROKER_PASSWORD=b\nFLOWER_PASSWORD=f\nMODE=x\n")
    unit = tmp_path / "pool.service"
    unit.write_text(textwrap.dedent(f"""\
        [Service]
        EnvironmentFile={secrets}
        UnsetEnvironment=FLOWER_PASSWORD
        UnsetEnvironment=MODE=y
        ExecStart=/bin/true
        """))
    environment = load_service(unit, {"FLOWER_PASSWORD": "inherited"}).environment
    assert "FLOWER_PASSWORD" not in environment  # from the file and from the base alike
    assert environment["BROKER_PASSWORD"] == "b"
    assert environment["MODE"] == "x"  # NAME=VALUE unsets only that exact value
