"""The site file's field types: the patterns and checks every value of a key must pass.

crate_deploy.site.model builds the site's sections from these; a value that reaches a unit
file or Python source is constrained by a pattern here first, and the renderer escapes on
top of that. Each pattern is also valid ECMA-262 (the JSON Schema's regex dialect).
"""

from __future__ import annotations

import posixpath
import re
from functools import partial
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import AfterValidator, Field, StringConstraints

from crate_deploy.site.cron import check_cron_field
from crate_deploy.site.strict import TEXT_PATTERN

# Names become parts of unit names, file names, node names and Python strings.
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"
QUEUE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$"
DOTTED_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
APP_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?$"
# Patterns use + and * with a separate max_length: bounded repetition ({1,4000}) costs
# pydantic-core's regex engine tens of milliseconds to compile, on every command.
ROUTE_PATTERN = r"^[A-Za-z0-9_.*]+$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"
CELERY_VERSION_PATTERN = r"^5\.\d+(\.\d+)?$"
FLOWER_VERSION_PATTERN = r"^2\.\d+(\.\d+)?$"
USER_PATTERN = r"^[a-z_][a-z0-9_-]{0,30}$"  # systemd's strict user names: at most 31
# Paths go into unit lines unquoted (WorkingDirectory=, ReadWritePaths=): keep them plain.
PATH_PATTERN = r"^[A-Za-z0-9_./@+,~-]+$"
SECRET_REFERENCE = re.compile(r"\$\{([A-Z_][A-Z0-9_]{0,99})\}")
CRON_PATTERN = r"^[0-9*/,-]+$"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
QueueName = Annotated[str, StringConstraints(pattern=QUEUE_PATTERN)]
TaskName = Annotated[str, StringConstraints(pattern=DOTTED_PATTERN, max_length=200)]
def _normalized_path(path: str) -> str:
    """systemd refuses a WorkingDirectory= that is not normalized, and silently ignores such
    an EnvironmentFile= or ReadWritePaths=: ask for the plain spelling."""
    if any(len(part.encode()) > 255 for part in path.split("/")):
        raise ValueError("has a path component longer than 255 bytes")
    if path.startswith("/") and posixpath.normpath(path) != path:
        raise ValueError(f"is not a normalized path: write {posixpath.normpath(path)!r}")
    return path


PathText = Annotated[str, StringConstraints(pattern=PATH_PATTERN, max_length=4000),
                     AfterValidator(_normalized_path)]
Text = Annotated[str, StringConstraints(pattern=TEXT_PATTERN, max_length=4000)]
RoutePattern = Annotated[str, StringConstraints(pattern=ROUTE_PATTERN, max_length=200)]
EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)]
ExtraArg = Annotated[str, StringConstraints(pattern=r"^-[^\x00-\x1f\x7f-\x9f]+$", max_length=500)]
Seconds = Annotated[float, Field(gt=0, le=7 * 24 * 3600)]

BROKER_SCHEMES = ("amqp", "amqps", "pyamqp", "redis", "rediss", "sentinel")
# RabbitMQ's: publisher confirms, quorum queues, dead letters, consumer counts, requeue.
RABBITMQ_SCHEMES = ("amqp", "amqps", "pyamqp")
PoolType = Literal["prefork", "threads", "solo", "gevent", "eventlet"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def _no_literal_password(url: str) -> str:
    """URLs may name a user, but a password must be a ${REFERENCE} to the secrets file."""
    try:
        parts = urlsplit(SECRET_REFERENCE.sub("x", url))
        password = parts.password
    except ValueError:
        # Not the exception's text: for some URLs it quotes the netloc, password and all.
        raise ValueError("is not a valid URL") from None
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if not port_ok:
        raise ValueError("has a port that is not a number from 1 to 65535")
    literal = password is not None and not _only_references(url, password)
    if literal or _password_in_query(url):
        raise ValueError("holds a literal password: write ${NAME} instead and put "
                         "NAME=the-password in the secrets_file")
    return url


def _password_in_query(url: str) -> bool:
    """Redis and SQL backends also read a password from the query string (?password=)."""
    query = urlsplit(SECRET_REFERENCE.sub("x", url)).query
    return any("pass" in key.lower() and value != "x" for key, value in parse_qsl(query))


def _only_references(url: str, password: str) -> bool:
    """True when the URL's password is exactly one ${REFERENCE} (replaced by "x" above)."""
    netloc = urlsplit(url).netloc
    userinfo = netloc.rpartition("@")[0]
    raw_password = userinfo.partition(":")[2]
    return password == "x" and SECRET_REFERENCE.fullmatch(raw_password) is not None  # noqa: S105


def _broker_scheme(url: str) -> str:
    scheme = url.partition("://")[0]
    if scheme == "sqs":
        raise ValueError("uses Amazon SQS, whose Celery transport has no remote control "
                         "(ping, inspect): launch could never tell the pools are ready, nor "
                         "status that they are up; use amqp:// (RabbitMQ) or redis://")
    if scheme not in BROKER_SCHEMES:
        raise ValueError(f"uses the unsupported transport {scheme!r} (one of: "
                         f"{', '.join(BROKER_SCHEMES)})")
    return url


def _secret_reference(value: str) -> str:
    if SECRET_REFERENCE.fullmatch(value) is None:
        raise ValueError("must be a reference like ${FLOWER_PASSWORD} to a variable in the "
                         "secrets_file, never the password itself")
    return value


# No ';': kombu would split it into failover URLs behind our checks (give a list instead).
# The quote is not escaped: \" is a Python-only escape, which ECMA-262 (the schema's regex
# dialect, compiled by editors in unicode mode) refuses. Patterns here must be both.
URL_PATTERN = r"^[^\s\x00-\x1f\x7f-\x9f'" + '"' + r"\\;]+$"
Url = Annotated[str, StringConstraints(pattern=URL_PATTERN, max_length=2000),
                AfterValidator(_no_literal_password)]
BrokerUrl = Annotated[Url, AfterValidator(_broker_scheme)]
SecretReference = Annotated[str, AfterValidator(_secret_reference)]


# Crontab fields: the characters by pattern (what the schema shows), the meaning by cron.py.
_CronText = Annotated[str, StringConstraints(pattern=CRON_PATTERN, max_length=100)]
CronMinute = Annotated[_CronText, AfterValidator(partial(check_cron_field, "minute"))]
CronHour = Annotated[_CronText, AfterValidator(partial(check_cron_field, "hour"))]
CronDayOfWeek = Annotated[str, StringConstraints(pattern=r"^[0-9a-z*/,-]+$", max_length=100),
                          AfterValidator(partial(check_cron_field, "day_of_week"))]
CronDayOfMonth = Annotated[_CronText, AfterValidator(partial(check_cron_field, "day_of_month"))]
CronMonth = Annotated[_CronText, AfterValidator(partial(check_cron_field, "month_of_year"))]


JsonScalar = Text | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | float | bool | None


def _hostname_labels(name: str) -> str:
    if any(len(label) > 63 for label in name.split(".")):
        raise ValueError("has a label (between dots) longer than 63 characters")
    return name


# RFC 1123 host names: dot-separated labels of letters, digits and '-' (not at either end).
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
HOSTNAME_PATTERN = rf"^{_LABEL}(\.{_LABEL})*$"
Hostname = Annotated[str, StringConstraints(pattern=HOSTNAME_PATTERN, max_length=253),
                     AfterValidator(_hostname_labels)]
