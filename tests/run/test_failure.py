"""How launch tells a certain failure from one a restart may cure (crate_deploy.run.failure),
and the service names operator commands take. What launch checks before starting anything
is check's cheap part: tests/inspect/test_access.py, tests/test_check.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crate_deploy.errors import UsageError
from crate_deploy.run.failure import EarlyExits, classify_early_exit

CELERY_52_BAD_APP = """\
Usage: celery [OPTIONS] COMMAND [ARGS]...
Try 'celery --help' for help.

Error: Invalid value for '-A' / '--app':
Unable to load celery application.
While trying to load the module crate_deploy_app the following error occurred:
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/celery/bin/celery.py", line 57, in convert
    return find_app(value)
           ^^^^^^^^^^^^^^^
  File "<frozen importlib._bootstrap>", line 1140, in _find_and_load_unlocked
ModuleNotFoundError: No module named 'ncap'
""".splitlines()
NO_FLOWER = ["Usage: celery [OPTIONS] COMMAND [ARGS]...", "Try 'celery --help' for help.", "",
             "Error: No such command 'flower'."]
PORT_TAKEN = """\
[I 251130 10:00:00 command:168] Visit me at http://127.0.0.1:5555
Traceback (most recent call last):
  File "/venv/bin/celery", line 8, in <module>
    sys.exit(main())
  File "/venv/lib/python3.11/site-packages/tornado/netutil.py", line 162, in bind_sockets
    sock.bind(sockaddr)
OSError: [Errno 98] Address already in use
""".splitlines()
BROKER_LOST = """\
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/kombu/connection.py", line 446, in _reraise
    raise ConnectionError(str(exc)) from exc
kombu.exceptions.OperationalError: [Errno 111] Connection refused
""".splitlines()


def test_a_usage_error_is_certain_and_says_the_exception_not_the_usage_line() -> None:
    failure = classify_early_exit("demo-worker-quick", 2, CELERY_52_BAD_APP)
    assert failure is not None
    assert failure.cause.startswith("ModuleNotFoundError: No module named 'ncap' (cannot import")
    assert failure.describe().startswith("demo-worker-quick failed before the fleet was ready")
    assert failure.last_lines == tuple(CELERY_52_BAD_APP)


def test_flower_missing_is_explained() -> None:
    failure = classify_early_exit("demo-flower", 2, NO_FLOWER)
    assert failure is not None
    assert failure.cause == ("Error: No such command 'flower'. (Flower is not installed in the "
                             "application's venv: pip install flower there)")


def test_exit_1_after_a_traceback_is_certain_but_a_lost_broker_is_not() -> None:
    failure = classify_early_exit("demo-flower", 1, PORT_TAKEN)
    assert failure is not None and "OSError: [Errno 98] Address already in use" in failure.cause
    assert classify_early_exit("demo-worker-quick", 1, BROKER_LOST) is None


def test_a_long_traceback_whose_header_scrolled_away_still_gives_its_exception() -> None:
    assert classify_early_exit("x", 2, CELERY_52_BAD_APP[8:]) is not None
    failure = classify_early_exit("x", 1, CELERY_52_BAD_APP[8:])
    assert failure is not None and "No module named 'ncap'" in failure.cause


@pytest.mark.parametrize("returncode", [1, 3, 137, -9, -15])
def test_exits_without_a_recognised_cause_leave_it_to_restart(returncode: int) -> None:
    assert classify_early_exit("x", returncode, ["starting", "giving up"]) is None


def test_a_failed_exec_is_certain() -> None:
    lines = ["failed to start: [Errno 2] No such file or directory: '/srv/nope/bin/celery'"]
    failure = classify_early_exit("demo-beat", 203, lines)
    assert failure is not None
    assert failure.cause == "[Errno 2] No such file or directory: '/srv/nope/bin/celery'"


def test_a_failed_exec_under_systemd_gives_systemds_own_words() -> None:
    """Under systemd the cause is the manager's line in the unit's journal (203/EXEC)."""
    lines = ["demo-beat.service: Failed to execute /srv/nope/venv/bin/celery: No such file or "
             "directory",
             "demo-beat.service: Failed at step EXEC spawning /srv/nope/venv/bin/celery: No "
             "such file or directory",
             "demo-beat.service: Main process exited, code=exited, status=203/EXEC"]
    failure = classify_early_exit("demo-beat.service", 203, lines)
    assert failure is not None
    assert failure.cause == ("Failed at step EXEC spawning /srv/nope/venv/bin/celery: No such "
                             "file or directory")


def test_early_exits_stop_once_and_count_until_ready() -> None:
    stops: list[int] = []
    watch = EarlyExits(lambda name: {"a": ["hm"], "b": NO_FLOWER}[name],
                       lambda: stops.append(1))
    watch.on_exit("a", 1, True)
    watch.on_exit("a", 1, True)
    assert watch.failure is None and watch.most_exits() == ("a", 2, 1)
    watch.on_exit("b", 2, True)
    watch.on_exit("b", 2, True)
    assert watch.failure is not None and watch.failure.service == "b" and stops == [1]
    ready = EarlyExits(lambda name: NO_FLOWER, lambda: stops.append(2))
    ready.ready.set()
    ready.on_exit("b", 2, True)  # after ready, Restart= and the start limit decide
    stopping = EarlyExits(lambda name: PORT_TAKEN, lambda: stops.append(3), lambda: True)
    stopping.on_exit("b", 1, False)  # what dies while the fleet stops is not the cause
    assert ready.failure is None and stopping.failure is None and stops == [1]


# --- the names operator commands take --------------------------------------------------


def test_service_names_operators_may_use(tmp_path: Path, run_cli: Any) -> None:
    from crate_deploy.run.control import resolve_services, services_and_directory
    from crate_deploy.state.deployment import load_deployment
    from tests.conftest import EXAMPLES

    out = tmp_path / "out"
    assert run_cli("render", EXAMPLES / "site.yaml", "-o", out).code == 0
    deployment = load_deployment(out)
    everything = [name.removesuffix(".service") for name in deployment.services]
    assert resolve_services(deployment, []) == everything
    assert resolve_services(deployment, ["flower", "consent", "crate-beat.service"]) == [
        "crate-worker-consent", "crate-beat", "crate-flower"]
    with pytest.raises(UsageError, match=r"no service 'nope'.*choose from crate-worker-"):
        resolve_services(deployment, ["nope"])
    assert services_and_directory(["beat", str(out)], Path("x")) == (["beat"], out)
    assert services_and_directory(["beat"], Path("x")) == (["beat"], Path("x"))
    logs = run_cli("logs", out)
    assert logs.code == 2 and "a foreground `crate-deploy launch` writes them" in logs.err
    restart = run_cli("restart", "flower", out)
    assert restart.code == 1 and "nothing launched from" in restart.err
    only = run_cli("launch", out, "--systemd", "--only", "beat")
    assert only.code == 2 and "--only is for a foreground launch" in only.err
