"""Cron fields have Celery's crontab() meaning, checked without importing Celery."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from crate_deploy.site.cron import RANGES, check_cron_field
from tests.conftest import MINIMAL
from tests.site.test_validate import messages


@pytest.mark.parametrize(("field", "text"), [
    ("minute", "*"), ("minute", "0"), ("minute", "*/15"), ("minute", "0,15,30,45"),
    ("minute", "59"), ("minute", "10-50/5"), ("hour", "22-2"), ("hour", "0-23"),
    ("day_of_week", "mon-fri"), ("day_of_week", "sun,sat"), ("day_of_week", "0-6"),
    ("day_of_week", "monday"), ("day_of_week", "*/2"), ("day_of_month", "1,15"),
    ("day_of_month", "31"), ("month_of_year", "1-12/3"), ("month_of_year", "12"),
])
def test_what_celery_accepts_is_accepted(field: str, text: str) -> None:
    assert check_cron_field(field, text) == text


@pytest.mark.parametrize(("field", "text", "message"), [
    ("minute", "75", "75 is out of range: minutes are 0-59"),
    ("minute", "60", "60 is out of range: minutes are 0-59"),
    ("hour", "24", "24 is out of range: hours are 0-23"),
    ("hour", "1-30", "30 is out of range: hours are 0-23"),
    ("day_of_week", "7", "7 is out of range: days of the week (0 = sunday) are 0-6"),
    ("day_of_week", "mon-fry", "'fry' is not a day of the week"),
    ("day_of_month", "0", "0 is out of range: days of the month are 1-31"),
    ("month_of_year", "13", "13 is out of range: months are 1-12"),
    ("minute", "*/0", "'*/0': the step after '/' must be a whole number of 1 or more"),
    ("minute", "*/", "'*/': the step after '/' must be a whole number of 1 or more"),
    ("minute", "5/2", "'5/2': Celery takes a step only after * or a range: write */2 or "
                      "5-59/2"),
    ("minute", "1,,2", "has an empty item between commas"),
    ("minute", "1-5-7", "'1-5-7' is not crontab syntax"),
    ("minute", "*-5", "'*-5' is not crontab syntax: a range goes from one value to another"),
    ("minute", "-5", "'-5' is not crontab syntax"),
])
def test_what_celery_refuses_is_refused(field: str, text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_cron_field(field, text)
    assert str(caught.value).startswith(message)


def test_an_out_of_range_minute_is_an_error_at_its_line(
        write_site: Callable[..., Path]) -> None:
    path = write_site(MINIMAL + """\
    beat:
      enabled: true
      schedule:
        - name: nightly
          task: demo.tasks.nightly
          cron: {minute: '75', hour: '3', day_of_week: 'mon-fri'}
    """)
    assert messages(path) == [
        "14:14: beat.schedule[0].cron.minute: 75 is out of range: minutes are 0-59"]


# Celery reads what follows a valid start of an item as nothing ("1-5-7" is 1-5), and a
# day name by its first three letters ("fri/2" is fri); we refuse both.
STRICTER_THAN_CELERY = {"1-5-7", "1-5/2x3", "fri/2"}


@pytest.mark.parametrize("field", sorted(RANGES))
def test_same_answer_as_celerys_own_parser(field: str) -> None:
    """Celery's crontab_parser (imported here, in the test, never by validate) accepts
    exactly what check_cron_field accepts, on a spread of good and bad fields."""
    from celery.schedules import crontab_parser

    low, high, _ = RANGES[field]
    parser = crontab_parser(high - low + 1, low)
    names = ["mon-fri", "sun", "sat-mon", "fri/2", "tue-thu/2"] if field == "day_of_week" else []
    candidates = [
        "*", "*/1", "*/7", "*/0", "*/", "*/x", "**", f"{low}", f"{high}", f"{high + 1}",
        f"{low - 1}" if low else "-1", f"{low}-{high}", f"{high}-{low}", f"{low}-{high}/3",
        f"{low}-{high + 1}", f"{low},{high}", f"{low},,{high}", ",", "5/2", "1-5-7", "1-5/2x3",
        "*-5", "-5", "1-", "", *names,
    ]
    for text in candidates:
        try:
            parser.parse(text)
            celery_says = True
        except Exception:  # ParseException, ValueError, IndexError: all mean "refused"
            celery_says = False
        try:
            check_cron_field(field, text)
            we_say = True
        except ValueError:
            we_say = False
        if text in STRICTER_THAN_CELERY:
            assert not we_say, text
        else:
            assert we_say == celery_says, (field, text, celery_says)
