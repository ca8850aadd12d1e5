"""Field errors and cross-checks in one run: the cross-checks run on what did validate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crate_deploy.errors import SiteError
from crate_deploy.site.validate import validate_file
from tests.conftest import EXAMPLES, MINIMAL, Result
from tests.site.test_validate import messages

# The issue's case: a field error, a duplicate pool name and a cross-field error at once.
ISSUE_CASE = MINIMAL + """\
        concurrency: 0
      - name: default
        queues: [celery]
        soft_time_limit: 90
        time_limit: 60
    """


def test_field_error_duplicate_and_cross_check_in_one_run(
        run_cli: Callable[..., Result], write_site: Callable[..., Path]) -> None:
    path = write_site(ISSUE_CASE)
    result = run_cli("validate", path)
    assert result.code == 2
    assert result.err.splitlines() == [
        f"{path}:9:5: workers[0].concurrency: must be >= 1",
        f"{path}:10:5: workers[1].name: 'default' is already used by workers[0]; names must "
        "be unique",
        f"{path}:12:5: workers[1].soft_time_limit: must be less than time_limit (60) so the "
        "task can clean up before it is killed",
        "3 error(s): nothing was written",
    ]


def test_a_bad_required_top_level_key_does_not_hide_the_cross_checks(
        write_site: Callable[..., Path]) -> None:
    path = write_site(ISSUE_CASE.replace("project: demo", "project: Demo")
                      .replace("app: demo.app", "app: 'not an app'"))
    assert [message.split(": ")[0] for message in messages(path)] == [
        "1:1", "2:1", "9:5", "10:5", "12:5"]


def test_cross_checks_are_numbered_as_in_the_file_when_items_were_taken_out(
        write_site: Callable[..., Path]) -> None:
    """The refused first queue and first pool are taken out before the cross-checks run;
    the duplicates they find are still named by their places in the file."""
    path = write_site(MINIMAL.replace("    workers:\n", """\
    queues:
      - name: "bad name"
      - name: celery
      - name: celery
      - {name: other, type: round}
    workers:
      - name: "Bad"
        queues: [celery]
      - name: default
        queues: [celery]
"""))
    assert messages(path) == [
        "7:5: queues[0].name: must start with a letter and use only letters, digits, '_', "
        "'.' and '-' (at most 100 characters)",
        "9:5: queues[2].name: 'celery' is already used by queues[1]; names must be unique",
        "10:19: queues[3].type: must be one of: 'classic' or 'quorum'",
        "12:5: workers[0].name: must start with a lowercase letter and use only a-z, 0-9, "
        "'_' and '-' (at most 40 characters)",
        "16:5: workers[2].name: 'default' is already used by workers[1]; names must be unique",
    ]


def test_a_refused_queue_is_not_also_reported_as_undeclared(
        write_site: Callable[..., Path]) -> None:
    """Queue 'fast' is refused for its type; the pool that consumes it must not be told
    that it is not declared, nor the queue that nobody consumes it."""
    path = write_site(MINIMAL.replace("    workers:\n", """\
    queues:
      - name: celery
      - {name: fast, type: fastest}
    workers:
""").replace("queues: [celery]", "queues: [celery, fast]"))
    assert messages(path) == ["8:18: queues[1].type: must be one of: 'classic' or 'quorum'"]


def _leaves(data: object, loc: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    if isinstance(data, dict):
        return [leaf for key, value in data.items() for leaf in _leaves(value, (*loc, key))]
    if isinstance(data, list):
        return [leaf for index, value in enumerate(data)
                for leaf in _leaves(value, (*loc, index))]
    return [loc]


GARBAGE: list[Any] = [None, 0, -1, 10**12, "", "Bad Name", "${X", [], {}, {"x": 1}, True, 1.5]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mix_of_refused_values_gives_problems_never_a_crash(
        data: st.DataObject, tmp_path: Path) -> None:
    """Replace a few values of the CRATE example with garbage: validate reports problems
    (each at a line of the file) and never raises anything but SiteError."""
    document = yaml.safe_load((EXAMPLES / "site.yaml").read_text())
    leaves = _leaves(document)
    for loc in data.draw(st.lists(st.sampled_from(leaves), min_size=1, max_size=6)):
        parent = document
        for part in loc[:-1]:
            parent = parent[part]
        parent[loc[-1]] = data.draw(st.sampled_from(GARBAGE))
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    lines = len(path.read_text().splitlines())
    try:
        validate_file(path)
    except SiteError as exc:
        assert exc.problems
        assert all(1 <= problem.line <= lines for problem in exc.problems)
