"""Every site key either changes what is rendered or is refused: none is wired to nothing.

A key the model accepts but no renderer reads passed every other test (a new Worker
field, goldens regenerated, all green). Here a site that sets every key of the model
(FULL) is rendered, then each key in turn is changed to other values of its type; for
each key at least one change must alter a rendered file (deployment.json, which records
the whole site, does not count) or be refused. A model field missing from FULL fails
the test too: add it to FULL, and the property then checks it.
"""

from __future__ import annotations

import copy
import json
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from crate_deploy.commands.unchanged import RENDER_RECORD_FILE
from crate_deploy.site.model import Site
from tests.conftest import Result

FULL: dict[str, Any] = {
    "project": "demo", "app": "demo.app", "celery": "/opt/demo/bin/celery",
    "celery_version": "5.7.0", "flower_version": "2.2.0", "working_directory": "/srv/demo",
    "user": "demo", "group": "demogroup", "environment": {"DJANGO_SETTINGS": "demo.settings"},
    "secrets_file": "/etc/demo/secrets.env",
    "paths": {"config_dir": "/etc/demo", "state_dir": "/var/lib/demo-state"},
    "broker": {"urls": ["amqp://demo:${BROKER_PASSWORD}@127.0.0.1:5672/demo",
                        "amqp://demo:${BROKER_PASSWORD}@127.0.0.2:5672/demo"],
               "failover_strategy": "shuffle", "heartbeat": 30, "confirm_publish": True,
               "connection_timeout": 7.0, "connection_retries": 5, "tolerate_down": 1},
    "results": {"backend": "redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0", "expires": 3600},
    "queues": [{"name": "work", "durable": True, "type": "quorum", "delivery_limit": 3,
                "dead_letter": True}, {"name": "other"}],
    "default_queue": "work", "default_queue_type": "classic",
    "routes": {"demo.tasks.*": "other"},
    "workers": [{"name": "main", "queues": ["work"], "concurrency": 3, "pool": "prefork",
                 "prefetch_multiplier": 2, "max_tasks_per_child": 100,
                 "max_memory_per_child": 200000, "soft_time_limit": 50.0, "time_limit": 60.0,
                 "acks_late": True, "reject_on_worker_lost": True, "log_level": "warning",
                 "task_events": False,
                 "soft_shutdown_timeout": 10.0, "soft_shutdown_on_idle": True,
                 "detect_quorum_queues": True, "disable_prefetch": True, "stop_timeout": 120.0,
                 "mingle": True, "extra_args": ["--heartbeat-interval=5"]},
                {"name": "auto", "queues": ["other"], "autoscale": {"min": 1, "max": 4}}],
    "beat": {"enabled": True, "schedule": [
        {"name": "nightly", "task": "demo.tasks.nightly", "args": [1, "a"], "kwargs": {"k": "v"},
         "queue": "work", "cron": {"minute": "0", "hour": "1", "day_of_week": "1",
                                   "day_of_month": "2", "month_of_year": "3"}},
        {"name": "tick", "task": "demo.tasks.tick", "every": 30.0}]},
    "flower": {"enabled": True, "address": "127.0.0.1", "port": 5555,
               "auth": [{"user": "admin", "password": "${FLOWER_PASSWORD}"}],
               "insecure_no_auth": False, "url_prefix": "flower", "persistent": True,
               "max_tasks": 5000, "purge_offline_workers": 3600, "read_only": True},
    "systemd": {"scope": "system", "restart": "always", "restart_sec": 3.0,
                "stop_timeout": 90.0, "hardening": True, "start_limit_burst": 4,
                "start_limit_interval": 200.0},
    "requires": ">=0.1",
    "app_settings": {"style": "old-uppercase"}, "delivery": "fast",
}
# The same site placed on two hosts (rendered with --all-hosts): what hosts.* keys change.
FULL_HOSTS: dict[str, Any] = {**FULL, "hosts": [
    {"name": "web1.example.org", "pools": ["main"], "beat": True, "flower": True},
    {"name": "web2.example.org", "pools": ["auto", "main"]}]}
# Subtrees another test walks the same way, with the target they need.
COVERED_ELSEWHERE = {
    "kubernetes": "tests/site/test_kubernetes_keys.py (render --target kubernetes)"}
# Mappings of the user's own keys (not model sections): changed as a whole.
MAPPINGS = {"environment", "routes", "beat.schedule.kwargs"}
# Only what deployment.json records for launch/status/requeue to read, not rendered
# anywhere else: the only reason a key may change nothing else.
# Keys FULL cannot set beside another (venv or celery): each is set in a site of its own.
ALTERNATIVES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "venv": lambda data: {**{k: v for k, v in data.items() if k != "celery"},
                          "venv": "/opt/demo-venv"},
}
RECORD_ONLY = {"flower.insecure_no_auth": "a permission, not a setting: it lets validation "
               "accept Flower off loopback without auth"}


def model_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, annotation) of every field, into nested models and their lists."""
    for name, field in model.model_fields.items():
        path = prefix + name
        yield path, field.annotation
        for inner in _nested_models(field.annotation):
            yield from model_fields(inner, path + ".")


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    found = []
    for arg in [annotation, *typing.get_args(annotation)]:
        for candidate in [arg, *typing.get_args(arg)]:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found.append(candidate)
    return found


def leaves(data: Any, prefix: str = "") -> dict[str, list[str | int]]:
    """Dotted path -> key path of every value FULL sets (in lists, the first item that
    sets it)."""
    found: dict[str, list[str | int]] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in MAPPINGS:
            inner: list[tuple[list[int], Any]] = [([], value)]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            inner = [([index], item) for index, item in enumerate(value)]
        else:
            found[path] = [key]
            continue
        for index, item in inner:
            for child, keys in leaves(item, path + ".").items():
                found.setdefault(child, [key, *index, *keys])
        found.setdefault(path, [key])
    return found


def _literals(annotation: Any) -> list[Any]:
    for arg in [annotation, *typing.get_args(annotation)]:
        if typing.get_origin(arg) is Literal:
            return list(typing.get_args(arg))
    return []


def variants(value: Any, annotation: Any) -> list[Any]:
    """Other values of the key's type (some may be refused: that counts as seen)."""
    if options := [option for option in _literals(annotation) if option != value]:
        return options
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, max(1, value - 1)]
    if isinstance(value, float):
        return [value + 1.0, value / 2]
    if isinstance(value, str):
        digits = [c for c in value if c.isdigit()]
        swapped = value[::-1].replace(digits[-1], str((int(digits[-1]) + 1) % 10), 1)[::-1] \
            if digits else value
        return [value + "x", swapped]
    if isinstance(value, list):
        return [value + value[-1:], value[:-1] or value + value]
    if isinstance(value, dict):
        key, item = next(iter(value.items()))
        return [{**value, f"{key}2": item}, {key: f"{item}2"}]
    return []


def _annotation_at(path: str, fields: dict[str, Any]) -> Any:
    return fields.get(path, type(None) | Any)


def _set(data: dict[str, Any], keys: list[str | int], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    target: Any = changed
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return changed


@pytest.fixture
def render(tmp_path: Path, run_cli: Callable[..., Result]) -> Callable[[dict[str, Any]],
                                                                       dict[str, str] | None]:
    """Render site data; the files (but deployment.json and the manifest), or None when
    the site is refused."""
    counter = iter(range(10_000))

    def run(data: dict[str, Any]) -> dict[str, str] | None:
        number = next(counter)
        site = tmp_path / f"site{number}.yaml"
        site.write_text(json.dumps(data))
        out = tmp_path / f"out{number}"
        hosts = ["--all-hosts"] if data.get("hosts") else []
        result = run_cli("render", site, "-o", out, *hosts)
        if result.code != 0:
            return None
        return {str(p.relative_to(out)): p.read_text().replace(site.name, "SITE")
                for p in out.rglob("*") if p.is_file() and p.name not in (
                    "deployment.json", ".crate-deploy-manifest.json", RENDER_RECORD_FILE)}

    return run


def test_full_sets_every_field_of_the_model() -> None:
    fields = {path for path, _ in model_fields(Site)}
    set_here = set(leaves(FULL)) | set(leaves(FULL_HOSTS)) | set(ALTERNATIVES)
    missing = {path for path in fields - set_here
               if not any(path.startswith(other + ".") for other in MAPPINGS)
               and not any(path == other or path.startswith(other + ".")
                           for other in COVERED_ELSEWHERE)
               and not any(other.startswith(path + ".") for other in set_here)}
    assert missing == set(), f"add these keys to FULL: {sorted(missing)}"


def _inert(render: Callable[[dict[str, Any]], dict[str, str] | None], data: dict[str, Any],
           wanted: Callable[[str], bool]) -> tuple[list[str], int]:
    """The keys of data (those `wanted` picks) whose every other value renders the same
    files as data itself, and how many renders that took."""
    base = render(data)
    assert base is not None, "the full site must be valid"
    fields = dict(model_fields(Site))
    inert, checked = [], 0
    for path, keys in leaves(data).items():
        if not wanted(path) or keys[-1] != path.rsplit(".", 1)[-1]:
            continue
        value: Any = data
        for key in keys:
            value = value[key]
        outcomes = [render(_set(data, keys, other))
                    for other in variants(value, _annotation_at(path, fields))]
        checked += len(outcomes)
        if all(outcome == base for outcome in outcomes):
            inert.append(path)
    return inert, checked


def test_every_field_changes_the_output_or_is_refused(
        render: Callable[[dict[str, Any]], dict[str, str] | None]) -> None:
    inert, checked = _inert(render, FULL, lambda path: path not in RECORD_ONLY)
    base = render(FULL)
    for path, change in ALTERNATIVES.items():
        if render(change(copy.deepcopy(FULL))) == base:
            inert.append(path)
    assert inert == [], f"keys that change no rendered file and are not refused: {inert}"
    assert checked > 100  # the walk reached every key


def test_every_hosts_field_changes_the_output_or_is_refused(
        render: Callable[[dict[str, Any]], dict[str, str] | None]) -> None:
    inert, checked = _inert(render, FULL_HOSTS, lambda path: path.startswith("hosts."))
    assert inert == [], f"hosts keys that change no rendered file and are not refused: {inert}"
    assert checked >= 4  # name, pools, beat, flower
