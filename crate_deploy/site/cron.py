"""Crontab fields with the meaning Celery's crontab() gives them, checked without Celery.

Celery parses a field when beat (and every worker) imports the schedule, so a value it
refuses (`minute: '75'`) makes every process crash at start. The grammar here is
Celery's `crontab_parser`: comma-separated items, each `*`, `*/STEP`, `N`, `A-B` or
`A-B/STEP`; a range whose end is below its start wraps around (hour `22-2`), and
day_of_week also takes names (sun-sat, or in full). Celery quietly ignores what follows
a valid start of an item (`1-5-7` reads as `1-5`); this refuses it instead.
"""

from __future__ import annotations

import re

# field -> (lowest, highest, what one value is called)
RANGES = {
    "minute": (0, 59, "minutes"),
    "hour": (0, 23, "hours"),
    "day_of_week": (0, 6, "days of the week (0 = sunday)"),
    "day_of_month": (1, 31, "days of the month"),
    "month_of_year": (1, 12, "months"),
}
WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_ITEM = re.compile(r"(?P<start>\*|[0-9a-z]+)(?:-(?P<end>[0-9a-z]+))?(?:/(?P<step>[0-9a-z]*))?")


def check_cron_field(field: str, text: str) -> str:
    """`text` if Celery's crontab() accepts it for `field`; else ValueError saying why."""
    for item in text.split(","):
        _check_item(field, item)
    return text


def _check_item(field: str, item: str) -> None:
    if not item:
        raise ValueError("has an empty item between commas")
    match = _ITEM.fullmatch(item)
    if match is None:
        raise ValueError(f"{item!r} is not crontab syntax: give *, */STEP, N, A-B or A-B/STEP, "
                         "several separated by commas")
    start, end, step = match.group("start", "end", "step")
    if start == "*" and end is not None:
        raise ValueError(f"{item!r} is not crontab syntax: a range goes from one value to "
                         "another (1-5), not from *")
    if step is not None:
        if start != "*" and end is None:
            raise ValueError(f"{item!r}: Celery takes a step only after * or a range: write "
                             f"*/{step} or {start}-{RANGES[field][1]}/{step}")
        if not step.isdigit() or int(step) < 1:
            raise ValueError(f"{item!r}: the step after '/' must be a whole number of 1 or more")
    for value in (start, end):
        if value not in (None, "*"):
            _check_value(field, value)


def _check_value(field: str, value: str) -> None:
    low, high, unit = RANGES[field]
    if value.isdigit():
        number = int(value)
    elif field == "day_of_week":
        number = _weekday(value)
    else:
        raise ValueError(f"{value!r} is not a number ({unit} are {low}-{high})")
    if not low <= number <= high:
        raise ValueError(f"{number} is out of range: {unit} are {low}-{high}")


def _weekday(name: str) -> int:
    for number, day in enumerate(WEEKDAYS):
        if name in (day, day[:3]):
            return number
    raise ValueError(f"{name!r} is not a day of the week: give 0-6 (0 = sunday) or "
                     "sun, mon, tue, wed, thu, fri, sat")
