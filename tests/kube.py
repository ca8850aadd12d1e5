"""Helpers for the Kubernetes render tests: read the manifests, validate them offline,
and do to a container spec what a kubelet does (env from Secrets and the pod's fields,
$(NAME) expansion in command and env), so a test can run it on this machine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from crate_deploy.render import render_site
from crate_deploy.site.validate import check_target, validate_file
from crate_deploy.target.probe import choose_versions
from crate_deploy.target.versions import NEWEST_KNOWN

KEDA_SCHEMA = Path(__file__).parent / "schemas" / "keda.json"
# The oldest Kubernetes the manifests are meant for (unhealthyPodEvictionPolicy is GA
# in 1.31, beta and on by default from 1.27), and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.27", "1.37")


def render_kubernetes(site_file: Path, config_dir: str = "/srv/rendered") -> dict[str, str]:
    """Every file `render --target kubernetes` writes for a site, by relative path."""
    validated = validate_file(site_file)
    check_target(validated, "kubernetes")
    site = validated.site
    versions = choose_versions(site, Path("/nonexistent"))[0] if site.celery_version else (
        NEWEST_KNOWN)
    rendering = render_site(site, str(site_file), site.paths.config_dir or config_dir,
                            versions, target="kubernetes")
    return {file.path: file.content for file in rendering.files}


def manifests(files: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every object of every manifest under kubernetes/, in file order."""
    return [document for path, text in sorted(files.items())
            if path.startswith("kubernetes/") for document in yaml.safe_load_all(text)
            if document is not None]


def of_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


# --- offline validation ------------------------------------------------------------


@cache
def _keda_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text()))


def validate_manifest(document: dict[str, Any]) -> None:
    """Raise unless the object is valid: Kubernetes kinds against the API's own schemas as
    kubernetes-validate ships them (strict: unknown fields refused), KEDA's against
    tests/schemas/keda.json."""
    if document["apiVersion"].startswith("keda.sh/"):
        _keda_validator().validate(document)
        return
    for version in KUBERNETES_VERSIONS:
        _kubernetes_validator(document["kind"], document["apiVersion"], version).validate(
            document)
    _api_server_checks(document)


DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
DNS_1035_LABEL = re.compile(r"[a-z]([a-z0-9-]*[a-z0-9])?")
LABEL_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")


def _api_server_checks(document: dict[str, Any]) -> None:
    """What the API server checks beyond the OpenAPI schema: object names (Services: DNS-1035
    labels of at most 63), label keys and values, on the object and its pod template."""
    metadata = document["metadata"]
    name = metadata["name"]
    if document["kind"] == "Service":
        assert DNS_1035_LABEL.fullmatch(name) and len(name) <= 63, f"Service name {name!r}"
    assert DNS_SUBDOMAIN.fullmatch(name) and len(name) <= 253, f"object name {name!r}"
    template = document.get("spec", {}).get("template", {}).get("metadata", {})
    selector = document.get("spec", {}).get("selector", {})
    for labels in (metadata.get("labels", {}), template.get("labels", {}),
                   selector.get("matchLabels", selector if document["kind"] == "Service" else {})):
        for key, value in labels.items():
            prefix, _, label = key.rpartition("/")
            assert LABEL_NAME.fullmatch(label) and len(label) <= 63, f"label key {key!r}"
            assert not prefix or (DNS_SUBDOMAIN.fullmatch(prefix) and len(prefix) <= 253), key
            assert value == "" or (LABEL_NAME.fullmatch(value) and len(value) <= 63), (
                f"label value {value!r}")


@cache
def _kubernetes_validator(kind: str, api_version: str,
                          version: str) -> jsonschema.Draft202012Validator:
    """What kubernetes_validate.validate(strict=True) builds, once per kind and version
    (it reads the 4 MB definitions file on every call)."""
    from kubernetes_validate.utils import all_versions, schema_contents
    from referencing import Registry, Resource

    full = next(v for v in all_versions() if v.rsplit(".", 1)[0] == version)
    folder = f"kubernetes-json-schema/v{full}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = schema_contents(f"{folder}/{kind.lower()}-{group}.json", full)
    definitions = schema_contents(f"{folder}/_definitions.json", full)
    registry: Registry[Any] = Resource.from_contents(definitions) @ (
        Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


# --- what a kubelet does --------------------------------------------------------------


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' $(NAME) expansion (k8s.io/kubernetes third_party expansion.Expand):
    $(NAME) of a defined variable becomes its value, an undefined one stays as written,
    $$ becomes $, any other $ is kept."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(":
            close = text.find(")", i + 2)
            if close == -1:
                out.append("$(")
                i += 2
                continue
            name = text[i + 2:close]
            out.append(variables.get(name, f"$({name})"))
            i = close + 1
        else:
            out.append("$" + following)
            i += 2
    return "".join(out)


def environment(spec: dict[str, Any], secrets: Mapping[str, Mapping[str, str]],
                pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it: in order, each value
    expanded against the variables before it; secretKeyRef and fieldRef looked up."""
    env: dict[str, str] = {}
    for var in spec.get("env", []):
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = expand(var.get("value", ""), env)
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = pod_name
        else:  # pragma: no cover - the renderer writes no other source
            raise AssertionError(f"unexpected env source {source}")
    return env


def command(spec: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    """The argv the container runtime execs: command + args, each expanded."""
    return [expand(word, env) for word in [*spec.get("command", []), *spec.get("args", [])]]


def iter_probes(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in spec:
            yield kind, spec[kind]


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as a secrets file holds them (no quoting)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {key.strip(): value for key, value in pairs}
