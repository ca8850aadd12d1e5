"""Every key of the kubernetes section changes the manifests, or is refused.

The keys are enumerated from the model, so a key added later without a value here
fails the first test, and one the renderer ignores fails the second.
"""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from crate_deploy.errors import SiteError
from crate_deploy.site.kubernetes import Kubernetes
from tests.kube import render_kubernetes

BASE: dict[str, Any] = {
    "project": "demo", "app": "demo.app", "celery": "/usr/bin/celery",
    "secrets_file": "/etc/demo/secrets.env",
    "broker": {"urls": ["amqp://demo:${BROKER_PASSWORD}@rabbit:5672/demo"]},
    "workers": [{"name": "default", "queues": ["celery"]}],
    "beat": {"enabled": True},
    "flower": {"enabled": True, "auth": [{"user": "a", "password": "${FLOWER_PASSWORD}"}]},
    "kubernetes": {"image": "registry.example.org/demo:1"},
}
# A value other than the default for every key ("pools.NAME" stands for the pool).
CHANGES: dict[str, Any] = {
    "image": "registry.example.org/demo:2",
    "image_pull_policy": "Always",
    "image_pull_secrets": ["regcred"],
    "namespace": "prod",
    "service_account": "celery",
    "secret": "demo-other",
    "run_as_user": 1000,
    "resources.requests.cpu": "500m",
    "resources.requests.memory": "256Mi",
    "resources.limits.cpu": "2",
    "resources.limits.memory": "1Gi",
    "pools.NAME.replicas": 3,
    "pools.NAME.min_replicas": 0,
    "pools.NAME.max_replicas": 4,
    "pools.NAME.resources.requests.cpu": "250m",
    "pools.NAME.resources.requests.memory": "128Mi",
    "pools.NAME.resources.limits.cpu": "1",
    "pools.NAME.resources.limits.memory": "512Mi",
    "keda.enabled": True,
    "keda.host_key": "AMQP_ADMIN_URL",
    "keda.polling_interval": 5,
    "keda.cooldown_period": 60,
    "labels": {"team": "x"},
    "annotations": {"example.org/note": "y"},
}


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        nested, container = _model_of(info.annotation)
        if nested is None:
            keys.append(prefix + name)
        else:
            step = ".NAME." if container is dict else "."
            keys.extend(leaf_keys(nested, prefix + name + step))
    return keys


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, Any]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, None
    for arg in typing.get_args(annotation):
        found, container = _model_of(arg)
        if found is not None:
            return found, container or typing.get_origin(annotation)
    return None, None


def test_every_key_has_a_changed_value_here() -> None:
    assert sorted(leaf_keys(Kubernetes)) == sorted(CHANGES)


def with_change(base: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(base)
    node = data["kubernetes"]
    parts = key.replace("NAME", "default").split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return data


def manifests_of(data: dict[str, Any], tmp_path: Path) -> dict[str, str] | None:
    """The kubernetes/ files, or None when the site is refused. One path for every site:
    the headers name it, and must not be the difference."""
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    try:
        files = render_kubernetes(path)
    except SiteError:
        return None
    return {key: text for key, text in files.items() if key.startswith("kubernetes/")}


@pytest.mark.parametrize("key", sorted(CHANGES))
def test_every_key_changes_the_manifests_or_is_refused(key: str, tmp_path: Path) -> None:
    keda = with_change(BASE, "keda.enabled", True)
    changed_somewhere = False
    for label, base in (("plain", BASE), ("keda", keda)):
        if with_change(base, key, CHANGES[key]) == base:
            continue  # keda.enabled: already so in the keda base
        before = manifests_of(base, tmp_path)
        assert before is not None
        assert manifests_of(copy.deepcopy(base), tmp_path) == before  # the test can tell
        after = manifests_of(with_change(base, key, CHANGES[key]), tmp_path)
        if after is None:
            continue  # refused: the key does not apply there (replicas under KEDA ...)
        assert after != before, f"{key} changed nothing with the {label} base"
        changed_somewhere = True
    assert changed_somewhere, f"{key} is refused everywhere"
