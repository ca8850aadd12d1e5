"""Properties of rendering, over random sites the model accepts.

`sites()` builds random site dicts from the model's own patterns: names, queues and
routes, 1-5 pools with 0-3 extra arguments each, beat entries, Flower on or off with
auth references, environment values of any printable text (quotes, '%', '$',
backslashes, spaces, unicode). A site is used only if Site.model_validate accepts it
and checks.check_site finds no error, just as `crate-deploy validate` would. For every
such site:

(a) every rendered unit passes `systemd-analyze verify` with nothing on stderr;
(b) the rendered Python config modules are plain `NAME = <literal>` assignments;
(c) the env file reads back (crate_deploy.systemd.units.parse_environment_file) as the site's
    environment, exactly;
(d) each unit's ExecStart= splits (crate_deploy.systemd.units.split_command_line) into exactly
    the intended argv, and no value puts a line of its own into a unit.

Also: parse_site either parses bytes or raises SiteError, never anything else.
"""

from __future__ import annotations

import ast
import re
import shutil
import string
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from crate_deploy.errors import SiteError
from crate_deploy.render import RenderedFile, render_site, seconds
from crate_deploy.site.checks import check_site
from crate_deploy.site.fields import (
    APP_PATTERN,
    DOTTED_PATTERN,
    ENV_NAME_PATTERN,
    NAME_PATTERN,
    QUEUE_PATTERN,
    ROUTE_PATTERN,
)
from crate_deploy.site.load import parse_site
from crate_deploy.site.model import Site
from crate_deploy.systemd.units import (
    parse_environment_file,
    parse_time_span,
    parse_unit,
    split_command_line,
)
from crate_deploy.target.versions import NEWEST_KNOWN
from tests.unit_checks import verify_units

# --- strategies -------------------------------------------------------------------------


def pattern(regex: str, max_size: int | None = None) -> st.SearchStrategy[str]:
    found = st.from_regex(regex, fullmatch=True)
    return found.filter(lambda text: len(text) <= max_size) if max_size else found


# Subsets of the model's patterns (shorter, so generation stays fast); the model checks
# every value again in accepted().
NAMES = pattern(NAME_PATTERN)
QUEUE_NAMES = pattern(r"[A-Za-z][A-Za-z0-9_.-]{0,24}")
IDENTIFIERS = pattern(r"[A-Za-z_][A-Za-z0-9_]{0,12}")
DOTTED = st.lists(IDENTIFIERS, min_size=1, max_size=4).map(".".join)
APPS = st.tuples(DOTTED, st.none() | IDENTIFIERS).map(
    lambda parts: parts[0] + (f":{parts[1]}" if parts[1] else ""))
ENV_NAMES = st.one_of(pattern(r"[A-Za-z_][A-Za-z0-9_]{0,20}"),
                      st.sampled_from(["PYTHONPATH", "PYTHONUNBUFFERED", "LANG", "HOME"]))
# Printable: anything but control characters (and lone surrogates, which no UTF-8 file holds).
_AWKWARD = ['"', "'", "%", "%h", "%%", "$", "$$", "$HOME", "\\", "\\n", "\\x41", " ", "  ",
            "`", ";", "#", "=", "{", "}", "é", "日本", "\u2028", "\u00a0", "😀", "\ufeff"]
PRINTABLE = st.lists(st.one_of(st.sampled_from(_AWKWARD), st.characters(
    blacklist_categories=("Cs", "Cc"))), max_size=25).map("".join)
# Environment values may hold anything printable but a ${...} (refused: not expanded).
ENV_VALUES = PRINTABLE.filter(lambda value: "${" not in value)
EXTRA_ARGS = st.one_of(
    st.sampled_from(["--without-gossip", "--without-mingle", "-E", "--heartbeat-interval=10",
                     "--statedb=/var/lib/x/%n.state"]),
    PRINTABLE.filter(bool).map(lambda text: "-" + text[:500]))
# Normalized absolute paths (the model refuses '..' and friends: tests/hostile/).
_COMPONENT = pattern(r"[A-Za-z0-9_.@+,~-]{1,12}").filter(lambda part: part not in (".", ".."))
PATHS = st.lists(_COMPONENT, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
# Seconds as the site author writes them: whole, or halves and quarters (see the seconds
# property below for arbitrary fractions).
SECONDS = st.one_of(st.integers(1, 3600), st.integers(1, 14400).map(lambda n: n / 4))
REFERENCES = pattern(r"[A-Z_][A-Z0-9_]{0,20}").map(lambda name: "${" + name + "}")
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20))


@st.composite
def broker(draw: st.DrawFn) -> dict[str, Any]:
    scheme = draw(st.sampled_from(["amqp", "pyamqp", "redis"]))
    user = draw(pattern(r"[a-z][a-z0-9_-]{0,10}"))
    secret = draw(st.sampled_from(["", ":${BROKER_PASSWORD}"]))
    urls = []
    for _ in range(draw(st.integers(1, 3))):
        port = draw(st.integers(1, 65535))
        tail = (f"/{draw(st.integers(0, 15))}" if scheme == "redis"
                else "/" + draw(pattern(r"[A-Za-z0-9_-]{0,10}")))
        urls.append(f"{scheme}://{user}{secret}@127.0.0.1:{port}{tail}")
    result: dict[str, Any] = {"urls": urls}
    if draw(st.booleans()):
        result["heartbeat"] = draw(st.integers(0, 3600))
        result["confirm_publish"] = draw(st.booleans())
        result["connection_retries"] = draw(st.none() | st.integers(0, 1000))
    return result


@st.composite
def worker(draw: st.DrawFn, name: str, queues: list[str], quorum: set[str]) -> dict[str, Any]:
    pool = draw(st.sampled_from(["prefork", "prefork", "threads", "solo", "gevent",
                                 "eventlet"]))
    consumed = draw(st.lists(st.sampled_from(queues), min_size=1, max_size=4, unique=True))
    result: dict[str, Any] = {"name": name, "queues": consumed, "pool": pool,
                              "log_level": draw(st.sampled_from(
                                  ["debug", "info", "warning", "error", "critical"])),
                              "extra_args": draw(st.lists(EXTRA_ARGS, max_size=3))}
    if pool == "solo":
        result["concurrency"] = 1
    elif pool == "prefork" and not set(consumed) & quorum and draw(st.booleans()):
        low = draw(st.integers(0, 8))
        result["autoscale"] = {"min": low, "max": draw(st.integers(max(low, 1), 16))}
    else:
        result["concurrency"] = draw(st.integers(1, 64))
    if pool == "prefork" and draw(st.booleans()):
        result["max_tasks_per_child"] = draw(st.integers(1, 10_000))
        result["max_memory_per_child"] = draw(st.integers(1024, 10**7))
    if pool in ("prefork", "gevent", "eventlet") and draw(st.booleans()):
        limit = draw(SECONDS)
        result["time_limit"] = limit
        if pool == "prefork" and limit > 1 and draw(st.booleans()):
            result["soft_time_limit"] = limit / 2
        if draw(st.booleans()):
            result["stop_timeout"] = limit + draw(SECONDS)
    elif draw(st.booleans()):
        result["stop_timeout"] = draw(SECONDS)
    if draw(st.booleans()):
        result["acks_late"] = False
        result["reject_on_worker_lost"] = False
    result["prefetch_multiplier"] = draw(st.integers(1, 1000))
    return result


@st.composite
def sites(draw: st.DrawFn) -> dict[str, Any]:
    queues = draw(st.lists(QUEUE_NAMES, min_size=1, max_size=4, unique=True))
    queue_specs = []
    quorum = set()
    for name in queues:
        kind = draw(st.sampled_from(["classic", "quorum"]))
        spec: dict[str, Any] = {"name": name, "type": kind, "durable": draw(st.booleans())}
        if kind == "quorum":
            quorum.add(name)
            spec["delivery_limit"] = draw(st.none() | st.integers(1, 1000))
        spec["dead_letter"] = draw(st.booleans())
        queue_specs.append(spec)
    pool_names = draw(st.lists(NAMES, min_size=1, max_size=5, unique=True))
    workers = [draw(worker(name, queues, quorum)) for name in pool_names]
    site: dict[str, Any] = {
        "project": draw(NAMES),
        "app": draw(APPS),
        "broker": draw(broker()),
        "queues": queue_specs,
        "workers": workers,
        "secrets_file": draw(PATHS),
        "environment": draw(st.dictionaries(ENV_NAMES, ENV_VALUES, max_size=5)),
        "routes": draw(st.dictionaries(pattern(r"[A-Za-z0-9_.*]{1,40}"), st.sampled_from(queues),
                                       max_size=3)),
    }
    if draw(st.booleans()):
        site["venv"] = draw(PATHS)
    else:
        site["celery"] = draw(PATHS)
    if draw(st.booleans()):
        site["default_queue"] = draw(st.sampled_from(queues))
    for key in ("working_directory",):
        if draw(st.booleans()):
            site[key] = draw(PATHS)
    if draw(st.booleans()):
        site["paths"] = {"state_dir": draw(PATHS)}
    scope = draw(st.sampled_from(["system", "user"]))
    site["systemd"] = {
        "scope": scope, "restart": draw(st.sampled_from(["on-failure", "always"])),
        "restart_sec": draw(SECONDS), "hardening": draw(st.booleans()),
        "start_limit_burst": draw(st.integers(1, 100)),
        "start_limit_interval": draw(SECONDS)}
    if scope == "system" and draw(st.booleans()):
        site["user"] = draw(pattern(r"[a-z_][a-z0-9_-]{0,30}"))
        if draw(st.booleans()):
            site["group"] = draw(pattern(r"[a-z_][a-z0-9_-]{0,30}"))
    site["results"] = {"backend": draw(st.sampled_from(
        [None, "rpc://", "redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0"]))}
    site["beat"] = {"enabled": draw(st.booleans()), "schedule": [
        draw(schedule_entry(name, queues))
        for name in draw(st.lists(NAMES, max_size=3, unique=True))]}
    site["flower"] = draw(flower())
    return site


@st.composite
def schedule_entry(draw: st.DrawFn, name: str, queues: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "task": draw(DOTTED),
                             "args": draw(st.lists(JSON_SCALARS, max_size=4)),
                             "kwargs": draw(st.dictionaries(IDENTIFIERS,
                                                            JSON_SCALARS, max_size=3))}
    if draw(st.booleans()):
        entry["cron"] = {"minute": draw(st.sampled_from(["0", "*/15", "5,35", "*"])),
                         "hour": draw(st.sampled_from(["*", "0", "1-5"])),
                         "day_of_week": draw(st.sampled_from(["*", "mon-fri", "0"]))}
    else:
        entry["every"] = draw(SECONDS)
    if draw(st.booleans()):
        entry["queue"] = draw(st.sampled_from(queues))
    return entry


@st.composite
def flower(draw: st.DrawFn) -> dict[str, Any]:
    if not draw(st.booleans()):
        return {"enabled": False}
    users = draw(st.lists(pattern(r"[A-Za-z0-9_.@-]{1,20}"), max_size=3, unique=True))
    result: dict[str, Any] = {
        "enabled": True,
        "address": draw(st.sampled_from(["127.0.0.1", "localhost", "::1", "0.0.0.0"])),
        "port": draw(st.integers(1024, 65535)),
        "auth": [{"user": user, "password": draw(REFERENCES)} for user in users],
        "persistent": draw(st.booleans()),
        "max_tasks": draw(st.integers(1, 10_000_000)),
    }
    if not users and result["address"] == "0.0.0.0":
        result["insecure_no_auth"] = True
    if draw(st.booleans()):
        result["url_prefix"] = draw(pattern(r"[A-Za-z0-9_-]{1,20}"))
    if draw(st.booleans()):
        result["purge_offline_workers"] = draw(st.integers(1, 10**6))
    return result


def accepted(data: dict[str, Any]) -> Site:
    """The site, if `crate-deploy validate` would accept it (else the example is skipped)."""
    try:
        site = Site.model_validate(data)
    except ValidationError as exc:  # pragma: no cover - the strategies aim at valid sites
        raise AssertionError(f"the strategy built an invalid site: {exc}") from None
    errors = [finding for finding in check_site(site) if finding[2] == "error"]
    assume(not errors)  # random ports may clash with Flower's, and so on
    return site


CONFIG_DIRS = PATHS


def render(site: Site, config_dir: str) -> dict[str, str]:
    files: list[RenderedFile] = render_site(site, "site.yaml", config_dir, NEWEST_KNOWN).files
    return {file.path: file.content for file in files}


def units(files: dict[str, str]) -> dict[str, str]:
    return {path.removeprefix("systemd/"): text for path, text in files.items()
            if path.startswith("systemd/")}


PROPERTY = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# --- (a) systemd-analyze verify ---------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=sites(), config_dir=CONFIG_DIRS)
def test_every_rendered_unit_passes_systemd_analyze_verify(data: dict[str, Any],
                                                           config_dir: str) -> None:
    site = accepted(data)
    with tempfile.TemporaryDirectory() as scratch:
        unit_dir = Path(scratch, "units")
        unit_dir.mkdir()
        for name, text in units(render(site, config_dir)).items():
            (unit_dir / name).write_text(text, encoding="utf-8")
        # verify_units stubs each ExecStart program, but reads the path unquoted: a path
        # render had to quote ("/srv/a~b/bin/celery") would get its stub in the wrong place.
        stub = Path(scratch, "root", site.celery_executable.lstrip("/"))
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n", encoding="utf-8")
        stub.chmod(0o755)
        result = verify_units(unit_dir, Path(scratch, "root"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# --- (b) config modules are plain literals ----------------------------------------------


def literals(source: str) -> dict[str, Any]:
    """NAME = <literal> statements only; anything else (a call, an import) fails."""
    values = {}
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign), ast.dump(node)
        assert len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), ast.dump(node)
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@PROPERTY
@given(data=sites(), config_dir=CONFIG_DIRS)
def test_config_modules_are_plain_literals(data: dict[str, Any], config_dir: str) -> None:
    site = accepted(data)
    files = render(site, config_dir)
    config = literals(files["crate_deploy_celeryconfig.py"])
    urls = site.broker.urls
    assert config["broker_url"] == (urls if len(urls) > 1 else urls[0])
    assert list(config["task_queues"]) == site.queue_names
    assert set(config["_POOL_SETTINGS"]) == {worker.name for worker in site.workers}
    if site.beat.enabled:
        assert {name: (entry["args"], entry["kwargs"])
                for name, entry in config["beat_schedule"].items()} == {
            entry.name: (list(entry.args), dict(entry.kwargs)) for entry in site.beat.schedule}
    if site.flower.enabled:
        options = literals(files["flowerconfig.py"])
        assert (options["address"], options["port"]) == (site.flower.address, site.flower.port)
    else:
        assert "flowerconfig.py" not in files


# --- (c) the env file reads back exactly ------------------------------------------------


@PROPERTY
@given(data=sites(), config_dir=CONFIG_DIRS)
@example(data={"project": "demo", "app": "demo.app", "celery": "/usr/bin/celery",
               "broker": {"urls": ["amqp://127.0.0.1:5672//"]},
               "workers": [{"name": "default", "queues": ["celery"]}],
               "environment": {"Q": "it's \"quoted\" $HOME `id` \\ %h", "S": "  spaced  ",
                               "E": "", "PYTHONPATH": "/srv/lib"}},
         config_dir="/etc/demo")
def test_env_file_reads_back_as_the_site_environment(data: dict[str, Any],
                                                      config_dir: str) -> None:
    site = accepted(data)
    files = render(site, config_dir)
    name = f"{site.project}.env"
    parsed = parse_environment_file(files[name], name)
    environment = dict(site.environment)
    python_path = ":".join([config_dir, *filter(None, [environment.pop("PYTHONPATH", "")])])
    assert parsed == {"PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1", **environment}


# --- (d) ExecStart= gives back exactly the intended argv --------------------------------

# Every key the templates write; a value that broke out of its line would add another.
UNIT_KEYS = {
    "Description", "Documentation", "After", "Wants", "PartOf", "StartLimitIntervalSec",
    "StartLimitBurst", "Type", "User", "Group", "DynamicUser", "WorkingDirectory",
    "UnsetEnvironment", "EnvironmentFile", "Environment", "ExecStart", "KillMode", "KillSignal",
    "TimeoutStopSec",
    "Restart", "RestartSec", "SyslogIdentifier", "StateDirectory", "StateDirectoryMode",
    "NoNewPrivileges", "UMask", "PrivateTmp", "PrivateDevices", "ProtectSystem", "ProtectHome",
    "ReadWritePaths", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc", "ProcSubset",
    "PrivateUsers", "RemoveIPC", "CapabilityBoundingSet", "AmbientCapabilities",
    "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID",
    "LockPersonality", "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber",
    "DevicePolicy", "KeyringMode", "WantedBy",
}
_LINE = re.compile(r"#.*|\[(Unit|Service|Install)\]|([A-Za-z]+)=.*|")


def intended_argv(site: Site, unit: str, config_dir: str) -> list[str]:
    celery = [site.celery_executable, "-A", "crate_deploy_app"]
    state_dir = site.paths.state_dir or (f"/var/lib/{site.project}"
                                         if site.systemd.scope == "system"
                                         else f"{config_dir}/state")
    if unit == f"{site.project}-beat.service":
        return [*celery, "beat", f"--schedule={state_dir}/celerybeat-schedule",
                "--loglevel=INFO"]
    if unit == f"{site.project}-flower.service":
        return [*celery, "flower", f"--conf={config_dir}/flowerconfig.py"]
    worker = next(w for w in site.workers if unit == f"{site.project}-worker-{w.name}.service")
    size = (f"--autoscale={worker.autoscale.max},{worker.autoscale.min}" if worker.autoscale
            else f"--concurrency={worker.concurrency}")
    return [*celery, "worker", f"--hostname={worker.name}@%h",
            f"--queues={','.join(worker.queues)}", f"--pool={worker.pool}",
            f"--loglevel={worker.log_level.upper()}", "-O", "fair",
            *(["--disable-prefetch"] if worker.disable_prefetch else []), "--without-gossip",
            *([] if worker.mingle else ["--without-mingle"]), size, *worker.extra_args]


@PROPERTY
@given(data=sites(), config_dir=CONFIG_DIRS)
@example(data={"project": "demo", "app": "demo.app", "celery": "/usr/bin/celery",
               "broker": {"urls": ["amqp://127.0.0.1:5672//"]},
               "workers": [{"name": "default", "queues": ["celery"], "extra_args": [
                   "--statedb=q\"u'o$t{e}%s\\back `tick` $HOME %%n", "-x;", "-\\", "- spaced ",
                   "-${HOME}", "-$$", "-\\n", "-\u2028", "-;", "-\\;"]}]},
         config_dir="/etc/demo")
def test_exec_start_gives_back_the_intended_argv(data: dict[str, Any], config_dir: str) -> None:
    site = accepted(data)
    environment = {"HOME": "/home/EXPANDED", "PATH": "/EXPANDED",
                   **{name: "EXPANDED" for name in site.environment}}
    for name, text in units(render(site, config_dir)).items():
        for line in text.split("\n"):
            match = _LINE.fullmatch(line)
            assert match, f"{name}: a line that is no unit syntax: {line!r}"
            assert match[2] is None or match[2] in UNIT_KEYS, f"{name}: unexpected {line!r}"
        if name.endswith(".target"):
            continue
        unit = parse_unit(text, name)
        (exec_start,) = unit.values("Service", "ExecStart")
        assert split_command_line(exec_start, environment) == intended_argv(site, name,
                                                                            config_dir)
        assert not any(unit.values("Service", key) for key in (
            "ExecStartPre", "ExecStartPost", "ExecStop", "ExecStopPost", "ExecCondition"))


# --- time spans ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(value=st.floats(min_value=1e-6, max_value=7 * 24 * 3600))
@example(value=5.0001)
@example(value=0.0001)
def test_seconds_are_time_spans_systemd_accepts(value: float) -> None:
    span = seconds(value)
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)?(s|ms|us)", span), span  # systemd: no "5." or "0.s"
    assert parse_time_span(span) > 0
    assert abs(parse_time_span(span) - value) <= 0.001


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_whole_and_quarter_seconds_are_accepted_by_systemd() -> None:
    spans = sorted({seconds(value) for value in (1, 5, 0.25, 0.5, 2.75, 630, 604800)})
    result = subprocess.run(["systemd-analyze", "timespan", *spans], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr


# --- parse_site never crashes ----------------------------------------------------------

_TOKENS = ["a", "b", "project", "workers", "name", ":", ": ", "- ", "\n", "  ", "    ", "[",
           "]", "{", "}", ",", "&a ", "&b ", "<<: ", "? ", "'", '"', "#", "---\n",
           "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "\t", "|", ">", "~", "null", "yes",
           "1", "0x1F", "0o17", "1e3", ".nan", "-.inf", "2001-12-14", "12:30:00", "\\",
           "\\x41", "\\u00e9", "é", "\ufeff", "\r", "!!str ", "!!binary ", "!!set ",
           "!!omap ", "!!python/object:os.system ", "!local ", "!<tag:yaml.org,2002:str> "]
# Tags that make PyYAML's constructors raise ValueError & co. on the wrong text, and
# numbers beyond Python's int-from-string limit (tests/hostile/*-tag-on-*text.yaml).
_CONSTRUCTOR_TOKENS = ["!!int ", "!!float ", "!!bool ", "!!timestamp ", "9" * 4400]
# Aliases: with an anchor on a mapping, `*a` as one of its own keys recurses without
# bound (tests/hostile/recursive-alias-as-key.yaml), so they go with the xfail below.
_ALIAS_TOKENS = ["*a", "*b"]


def yamlish(tokens: list[str]) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(tokens), max_size=60).map(
        lambda parts: "".join(parts).encode("utf-8"))


def parses_or_refuses(raw: bytes) -> None:
    try:
        loaded = parse_site(raw, "s.yaml")
    except SiteError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.line >= 1 and problem.column >= 1
            assert "\n" not in str(problem), str(problem)
        return
    assert isinstance(loaded.data, dict)


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.binary(max_size=300),
                     st.text(max_size=200).map(lambda text: text.encode("utf-8", "replace")),
                     yamlish(_TOKENS)))
def test_parse_site_parses_or_raises_site_error(raw: bytes) -> None:
    parses_or_refuses(raw)


@settings(max_examples=300, deadline=None)
@given(raw=yamlish(_TOKENS + _CONSTRUCTOR_TOKENS + _ALIAS_TOKENS))
@example(raw=b"a: !!int x\n")
@example(raw=b"a: !!float ''\n")
@example(raw=b"a: &a {*a : 1}\n")
def test_parse_site_survives_tags_and_aliases(raw: bytes) -> None:
    parses_or_refuses(raw)


def test_printable_strategy_covers_the_awkward_characters() -> None:
    """The property tests are only as good as their text: make sure it is hostile."""
    assert set("\"'%$\\ `") <= set("".join(_AWKWARD))
    assert any(char not in string.printable for char in "".join(_AWKWARD))


@settings(max_examples=50, deadline=None)
@given(name=NAMES, queue=QUEUE_NAMES, app=APPS, task=DOTTED, env=ENV_NAMES,
       route=pattern(r"[A-Za-z0-9_.*]{1,40}"))
def test_strategies_stay_inside_the_model_patterns(name: str, queue: str, app: str, task: str,
                                                   env: str, route: str) -> None:
    for value, regex in ((name, NAME_PATTERN), (queue, QUEUE_PATTERN), (app, APP_PATTERN),
                         (task, DOTTED_PATTERN), (env, ENV_NAME_PATTERN),
                         (route, ROUTE_PATTERN)):
        assert re.fullmatch(regex, value), (value, regex)


# --- (e) Kubernetes manifests: valid, and the plan's argv and environment, exactly ------

KUBE_NAMES = pattern(r"[a-z][a-z0-9-]{0,20}[a-z0-9]")
QUANTITIES = st.one_of(st.sampled_from(["100m", "1", "1.5", "512Mi", "2Gi", "64k"]),
                       st.integers(1, 64).map(str))


@st.composite
def kubernetes_section(draw: st.DrawFn, pools: list[str]) -> dict[str, Any]:
    def resources() -> dict[str, Any]:
        return {part: {kind: draw(QUANTITIES) for kind in draw(st.lists(
            st.sampled_from(["cpu", "memory"]), unique=True))} for part in ("requests", "limits")}

    keda = draw(st.booleans())
    section: dict[str, Any] = {
        "image": draw(st.sampled_from(["app", "registry.example.org:5000/team/app",
                                       "ghcr.io/o-1/a.b_c"])) + ":" + draw(
            pattern(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}")),
        "image_pull_policy": draw(st.sampled_from(["IfNotPresent", "Always", "Never"])),
        "image_pull_secrets": draw(st.lists(KUBE_NAMES, max_size=2)),
        "labels": draw(st.dictionaries(pattern(r"[a-z]{1,8}(\.[a-z]{1,5})?/[a-z]{1,8}"),
                                       pattern(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9])?)?"),
                                       max_size=2)),
        "annotations": draw(st.dictionaries(pattern(r"[a-z]{1,8}"), PRINTABLE, max_size=2)),
        "keda": {"enabled": keda},
        "pools": {},
    }
    for key, value in (("namespace", KUBE_NAMES), ("service_account", KUBE_NAMES),
                       ("secret", KUBE_NAMES), ("run_as_user", st.integers(1, 2**31 - 1))):
        if draw(st.booleans()):
            section[key] = draw(value)
    if draw(st.booleans()):
        section["resources"] = resources()
    for pool in draw(st.lists(st.sampled_from(pools), unique=True)):
        low = draw(st.integers(0, 5))
        section["pools"][pool] = ({"min_replicas": low, "max_replicas": low + draw(
            st.integers(1, 20))} if keda else {"replicas": draw(st.integers(0, 50))})
        if draw(st.booleans()):
            section["pools"][pool]["resources"] = resources()
    return section


@st.composite
def kubernetes_sites(draw: st.DrawFn) -> dict[str, Any]:
    site = draw(sites())
    site["project"] = site["project"].replace("_", "-")
    for worker in site["workers"]:
        worker["name"] = worker["name"].replace("_", "-")
    if site["broker"]["urls"][0].startswith("redis"):
        site["broker"]["urls"] = [url.replace("redis://", "amqp://", 1).rsplit("/", 1)[0] + "/v"
                                  for url in site["broker"]["urls"]]
    site["kubernetes"] = draw(kubernetes_section([w["name"] for w in site["workers"]]))
    return site


def kubernetes_render(site: Site, config_dir: str) -> dict[str, str]:
    from crate_deploy.site.kubernetes_checks import target_findings

    assume(not list(target_findings(site)))  # Flower on loopback without auth ...
    files = render_site(site, "site.yaml", config_dir, NEWEST_KNOWN, target="kubernetes").files
    return {file.path: file.content for file in files}


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=kubernetes_sites(), config_dir=CONFIG_DIRS)
def test_kubernetes_manifests_are_valid_and_run_the_plan(data: dict[str, Any],
                                                         config_dir: str) -> None:
    from tests.kube import command, container, environment, manifests, of_kind, validate_manifest

    site = accepted(data)
    files = kubernetes_render(site, config_dir)
    documents = manifests(files)
    for document in documents:
        validate_manifest(document)
    secret = site.kubernetes.secret if site.kubernetes and site.kubernetes.secret else (
        f"{site.project}-secrets")
    secrets = {secret: {name: f"<{name}>" for name in ("BROKER_PASSWORD", "REDIS_PASSWORD")}}
    secrets[secret].update({user["password"][2:-1]: "pw" for user in data["flower"].get(
        "auth", [])})
    plain = dict(site.environment)
    python_path = ":".join([config_dir, *filter(None, [plain.pop("PYTHONPATH", "")])])
    for name, deployment in of_kind(documents, "Deployment").items():
        spec = container(deployment)
        env = environment(spec, secrets, pod_name="pod-1")
        argv = intended_argv(site, f"{name}.service", config_dir)
        argv = [arg.replace("@%h", "@pod-1", 1) if arg.startswith("--hostname=") else arg
                for arg in argv] + (["--address=0.0.0.0"] if name.endswith("-flower") else [])
        assert command(spec, env) == argv
        assert {key: env[key] for key in plain} == plain
        assert env["PYTHONPATH"] == python_path
