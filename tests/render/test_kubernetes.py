"""render --target kubernetes: valid manifests for every example, the same config files
as the systemd render, commands that are the plan's argv, secrets only by reference."""

from __future__ import annotations

import hashlib
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from crate_deploy.plan.services import build_plan
from crate_deploy.render import render_site
from crate_deploy.render.kubernetes import CONFIGMAP_FILES
from crate_deploy.site.validate import validate_file
from crate_deploy.target.versions import NEWEST_KNOWN
from tests.conftest import EXAMPLES, MINIMAL, Result
from tests.kube import (
    command,
    container,
    environment,
    manifests,
    of_kind,
    render_kubernetes,
    validate_manifest,
)

# Every example but the multi-host one (Kubernetes places pods itself: hosts: is refused).
EXAMPLE_FILES = sorted([*EXAMPLES.glob("*.yaml"), EXAMPLES / "demo" / "site.yaml"])
EXAMPLE_FILES.remove(EXAMPLES / "multi-host.yaml")
IDS = [str(path.relative_to(EXAMPLES)) for path in EXAMPLE_FILES]


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, str]]:
    return {name: render_kubernetes(path) for name, path in zip(IDS, EXAMPLE_FILES, strict=True)}


def test_every_example_has_a_kubernetes_render() -> None:
    assert {"kubernetes.yaml", "site.yaml", "minimal.yaml", "demo/site.yaml"} <= set(IDS)


@pytest.mark.parametrize("example", IDS)
def test_every_manifest_validates_offline(rendered: dict[str, dict[str, str]],
                                         example: str) -> None:
    documents = manifests(rendered[example])
    assert documents
    for document in documents:
        validate_manifest(document)


def test_validation_refuses_what_the_api_server_would(
        rendered: dict[str, dict[str, str]]) -> None:
    """The validator is not a rubber stamp: an unknown field, a wrong type, an unknown
    KEDA key are each refused."""
    documents = manifests(rendered["kubernetes.yaml"])
    deployment = next(doc for doc in documents if doc["kind"] == "Deployment")
    scaled = next(doc for doc in documents if doc["kind"] == "ScaledObject")
    broken = [
        {**deployment, "spec": {**deployment["spec"], "replica": 2}},
        {**deployment, "spec": {**deployment["spec"], "revisionHistoryLimit": "5"}},
        {**scaled, "spec": {**scaled["spec"], "minReplicas": 1}},
        {**scaled, "spec": {**scaled["spec"], "triggers": [
            {**scaled["spec"]["triggers"][0], "metadata": {"queueName": "q", "password": "x"}}]}},
    ]
    import jsonschema

    for document in broken:
        with pytest.raises(jsonschema.ValidationError):
            validate_manifest(document)


@pytest.mark.parametrize("example", IDS)
def test_configmap_holds_the_systemd_renders_files_byte_for_byte(
        rendered: dict[str, dict[str, str]], example: str) -> None:
    path = EXAMPLES / example
    site = validate_file(path).site
    systemd = {file.path: file.content for file in render_site(
        site, str(path), site.paths.config_dir or "/srv/rendered",
        _versions(site)).files}
    files = rendered[example]
    (config_map,) = of_kind(manifests(files), "ConfigMap").values()
    expected = {name: systemd[name] for name in CONFIGMAP_FILES if name in systemd}
    assert config_map["data"] == expected
    assert {name: files[name] for name in expected} == expected  # the same files beside
    checksum = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()
    for deployment in of_kind(manifests(files), "Deployment").values():
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["crate-deploy/config-checksum"] == checksum


def _versions(site: Any) -> Any:
    from crate_deploy.target.probe import choose_versions

    return choose_versions(site, Path("/nonexistent"))[0] if site.celery_version else NEWEST_KNOWN


def test_a_config_change_changes_every_pods_checksum(tmp_path: Path) -> None:
    data = yaml.safe_load((EXAMPLES / "site.yaml").read_text())
    before = render_kubernetes(EXAMPLES / "site.yaml")
    data["results"]["expires"] = 7200
    changed = tmp_path / "site.yaml"
    changed.write_text(yaml.safe_dump(data))
    after = render_kubernetes(changed)

    def checksums(files: dict[str, str]) -> set[str]:
        return {d["spec"]["template"]["metadata"]["annotations"]["crate-deploy/config-checksum"]
                for d in of_kind(manifests(files), "Deployment").values()}

    assert len(checksums(before)) == len(checksums(after)) == 1
    assert checksums(before) != checksums(after)


@pytest.mark.parametrize("example", IDS)
def test_container_commands_are_the_plans_argv(rendered: dict[str, dict[str, str]],
                                              example: str) -> None:
    """After the kubelet's expansion, each command is what the systemd unit runs, with the
    node name from the pod's name, and Flower listening on the pod's address."""
    path = EXAMPLES / example
    site = validate_file(path).site
    plan = build_plan(site, site.paths.config_dir or "/srv/rendered")
    deployments = of_kind(manifests(rendered[example]), "Deployment")
    assert set(deployments) == {service.name for service in plan.services}
    secrets = {_secret_name(site): _FakeSecret()}
    for service in plan.services:
        spec = container(deployments[service.name])
        env = environment(spec, secrets, pod_name="pod-abc12")
        expected = [arg.replace("@%h", "@pod-abc12") if arg.startswith("--hostname=") else arg
                    for arg in service.argv]
        if service.role == "flower":
            expected.append("--address=0.0.0.0")
        assert command(spec, env) == expected
        assert "args" not in spec and spec["command"][0] == site.celery_executable


class _FakeSecret(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return f"<{key}>"


def _secret_name(site: Any) -> str:
    return str(site.kubernetes.secret or f"{site.project}-secrets")


def test_each_workload_reads_only_the_secret_keys_it_needs(
        rendered: dict[str, dict[str, str]]) -> None:
    deployments = of_kind(manifests(rendered["kubernetes.yaml"]), "Deployment")

    def keys(name: str) -> list[str]:
        env = container(deployments[name])["env"]
        refs = [var["valueFrom"]["secretKeyRef"] for var in env
                if "secretKeyRef" in var.get("valueFrom", {})]
        assert {ref["name"] for ref in refs} <= {"shop-celery"}
        return [ref["key"] for ref in refs]

    for name in ("shop-worker-orders", "shop-worker-background", "shop-beat"):
        assert keys(name) == ["BROKER_PASSWORD", "REDIS_PASSWORD"]
    assert keys("shop-flower") == ["BROKER_PASSWORD", "REDIS_PASSWORD", "FLOWER_PASSWORD"]
    # KEDA's management URL goes to the TriggerAuthentication only, never to a pod.
    for deployment in deployments.values():
        assert "RABBITMQ_MANAGEMENT_URL" not in json.dumps(deployment)


def test_no_secret_value_reaches_a_manifest(write_site: Callable[..., Path],
                                            tmp_path: Path) -> None:
    """Even with the secrets file readable, only references reach the output."""
    secrets = tmp_path / "secrets.env"
    values = {"BROKER_PASSWORD": "b-7f3e9a1c55", "FLOWER_PASSWORD": "f-2d8c4b6e01"}
    secrets.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    secrets.chmod(0o600)
    path = write_site(MINIMAL.replace("amqp://127.0.0.1", "amqp://u:${BROKER_PASSWORD}@127.0.0.1")
                      + textwrap.indent(textwrap.dedent(f"""\
                          secrets_file: {secrets}
                          flower:
                            enabled: true
                            auth: [{{user: a, password: "${{FLOWER_PASSWORD}}"}}]
                          kubernetes: {{image: "a/b:1"}}
                          """), "    "))
    files = render_kubernetes(path)
    assert "${BROKER_PASSWORD}" in files["kubernetes/demo-config.yaml"]
    for name, text in files.items():
        for value in values.values():
            assert value not in text, name


def test_stop_grace_is_the_stop_timeout_plus_the_soft_shutdown(write_site: Callable[..., Path]
                                                               ) -> None:
    path = write_site(MINIMAL + """\
        time_limit: 300
        soft_shutdown_timeout: 45
      - name: other
        queues: [celery]
    celery_version: "5.5.0"
    kubernetes: {image: "registry.example.org/demo:1"}
    """)
    deployments = of_kind(manifests(render_kubernetes(path)), "Deployment")
    assert deployments["demo-worker-default"]["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] == 300 + 30 + 45
    assert deployments["demo-worker-other"]["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] == 600


def test_beat_is_one_pod_replaced_never_overlapped(rendered: dict[str, dict[str, str]]) -> None:
    documents = manifests(rendered["kubernetes.yaml"])
    beat = of_kind(documents, "Deployment")["shop-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    for kind in ("PodDisruptionBudget", "ScaledObject"):
        assert "shop-beat" not in of_kind(documents, kind)


def test_keda_scales_each_pool_on_its_queues(rendered: dict[str, dict[str, str]]) -> None:
    documents = manifests(rendered["kubernetes.yaml"])
    scaled = of_kind(documents, "ScaledObject")
    assert set(scaled) == {"shop-worker-orders", "shop-worker-background"}
    for name, deployment in of_kind(documents, "Deployment").items():
        if name in scaled:
            assert "replicas" not in deployment["spec"]  # KEDA's HPA owns it
    (orders,) = scaled["shop-worker-orders"]["spec"]["triggers"]
    assert orders["metadata"] == {"protocol": "http", "mode": "QueueLength", "value": "8",
                                  "queueName": "orders"}
    (background,) = scaled["shop-worker-background"]["spec"]["triggers"]
    assert background["metadata"]["queueName"] == r"^(emails|reports\.daily)$"
    assert (background["metadata"]["useRegex"], background["metadata"]["operation"]) == (
        "true", "sum")
    assert scaled["shop-worker-background"]["spec"]["minReplicaCount"] == 0
    (auth,) = of_kind(documents, "TriggerAuthentication").values()
    assert auth["spec"] == {"secretTargetRef": [
        {"parameter": "host", "name": "shop-celery", "key": "RABBITMQ_MANAGEMENT_URL"}]}
    assert orders["authenticationRef"] == {"name": auth["metadata"]["name"]}


def test_pods_are_hardened(rendered: dict[str, dict[str, str]]) -> None:
    for deployment in of_kind(manifests(rendered["site.yaml"]), "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        spec = container(deployment)
        assert spec["securityContext"] == {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
        mounts = {mount["mountPath"]: mount for mount in spec["volumeMounts"]}
        assert set(mounts) == {"/etc/crate-deploy/crate", "/tmp", "/var/lib/crate"}
        assert mounts["/etc/crate-deploy/crate"]["readOnly"] is True


def test_probes_ping_at_startup_and_stay_cheap_after(rendered: dict[str, dict[str, str]]
                                                     ) -> None:
    deployments = of_kind(manifests(rendered["site.yaml"]), "Deployment")
    worker = container(deployments["crate-worker-consent"])
    ping = worker["startupProbe"]["exec"]["command"]
    assert ping[:2] == ["/bin/sh", "-c"] and "inspect ping" in ping[2]
    assert '--destination "consent@$HOSTNAME"' in ping[2]
    liveness = " ".join(worker["livenessProbe"]["exec"]["command"])
    assert "inspect" not in liveness and "CRATE_DEPLOY_HEARTBEAT_FILE" in liveness
    flower = container(deployments["crate-flower"])
    assert flower["readinessProbe"]["httpGet"] == {"path": "/flower/healthcheck",
                                                   "port": "http"}
    beat = container(deployments["crate-beat"])
    assert "inspect" not in json.dumps(beat)


def test_every_pool_has_a_disruption_budget_that_never_blocks_a_drain(
        rendered: dict[str, dict[str, str]]) -> None:
    budgets = of_kind(manifests(rendered["site.yaml"]), "PodDisruptionBudget")
    assert set(budgets) == {"crate-worker-consent", "crate-worker-maintenance"}
    for budget in budgets.values():
        assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]


# --- the command line ----------------------------------------------------------------


def test_render_defaults_to_systemd(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("render", EXAMPLES / "minimal.yaml", "-o", out).code == 0
    assert (out / "systemd").is_dir() and not (out / "kubernetes").exists()
    result = run_cli("render", EXAMPLES / "minimal.yaml", "-o", out, "--target", "kubernetes")
    assert result.code == 0, result.err
    assert (out / "kubernetes" / "myapp-worker-default.yaml").is_file()
    assert "removed" in result.out  # the units of the other target go


@pytest.mark.parametrize(("extra", "expected"), [
    ("", "site.yaml:1:1: kubernetes: render --target kubernetes needs a kubernetes section"),
    ("kubernetes: {image: nginx}\n", "site.yaml:9:14: kubernetes.image: must be an image "
     "reference with a tag or digest"),
    ("kubernetes:\n  image: a/b:1\n  namespace: Prod\n",
     "site.yaml:11:3: kubernetes.namespace: must be a Kubernetes name"),
    ("kubernetes:\n  image: a/b:1\n  resources: {requests: {cpu: 1}}\n",
     "site.yaml:11:26: kubernetes.resources.requests.cpu: must be text"),
    ("kubernetes:\n  image: a/b:1\n  pools: {defualt: {replicas: 2}}\n",
     "site.yaml:11:11: kubernetes.pools.defualt: names no pool of the site (pools: default)"),
    ("kubernetes:\n  image: a/b:1\n  keda: {enabled: true}\n  pools: {default: {replicas: 2}}\n",
     "kubernetes.pools.default.replicas: KEDA sets the replicas"),
    ("kubernetes:\n  image: a/b:1\n  pools: {default: {max_replicas: 2}}\n",
     "kubernetes.pools.default.max_replicas: only applies with kubernetes.keda.enabled"),
    ("kubernetes:\n  image: a/b:1\n  keda: {polling_interval: 5}\n",
     "kubernetes.keda.polling_interval: only applies with keda.enabled: true"),
    ("kubernetes:\n  image: a/b:1\n  labels: {app.kubernetes.io/name: x}\n",
     "kubernetes.labels.app.kubernetes.io/name: app.kubernetes.io/name is set by crate-deploy"),
    ("kubernetes:\n  image: a/b:1\n  labels: {team: -x}\n", "kubernetes.labels.team: must be "
     "a label value"),
    ("environment: {HOSTNAME: x}\nkubernetes: {image: \"a/b:1\"}\n",
     "environment.HOSTNAME: in Kubernetes HOSTNAME is the pod's name"),
    ("paths: {state_dir: /tmp}\nkubernetes: {image: \"a/b:1\"}\n",
     "paths.state_dir: in Kubernetes the state directory is an emptyDir of its own"),
    ("paths: {config_dir: /etc/x, state_dir: /etc/x/state}\nkubernetes: {image: \"a/b:1\"}\n",
     "paths.state_dir: in Kubernetes the state directory is an emptyDir of its own"),
])
def test_bad_kubernetes_sites_are_refused_with_their_position(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path,
        extra: str, expected: str) -> None:
    path = write_site(MINIMAL + textwrap.indent(extra, "    "))
    out = tmp_path / "out"
    result = run_cli("render", path, "-o", out, "--target", "kubernetes")
    assert result.code == 2, result
    assert expected in result.err.replace(str(path), "site.yaml"), result.err
    assert "Traceback" not in result.err and not out.exists()


def test_names_kubernetes_refuses_are_refused_only_for_kubernetes(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    path = write_site(MINIMAL.replace("project: demo", "project: my_app").replace(
        "name: default", "name: big_pool") + "    kubernetes: {image: \"a/b:1\"}\n")
    assert run_cli("render", path, "-o", tmp_path / "units").code == 0
    result = run_cli("render", path, "-o", tmp_path / "k8s", "--target", "kubernetes")
    assert result.code == 2
    assert "site.yaml:1:1: project: 'my_app': Kubernetes names and labels take lowercase " in (
        result.err.replace(str(path), "site.yaml"))
    assert "workers[0].name: 'big_pool'" in result.err
    path.write_text(path.read_text().replace("my_app", "app").replace("big_pool", "pool-"))
    result = run_cli("render", path, "-o", tmp_path / "k8s", "--target", "kubernetes")
    assert result.code == 2 and "workers[0].name: 'pool-': Kubernetes names" in result.err


def test_an_environment_variable_named_like_a_secret_is_refused(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    path = write_site(MINIMAL.replace("amqp://127.0.0.1", "amqp://u:${PW}@127.0.0.1")
                      + "    secrets_file: /etc/x.env\n    environment: {PW: plain}\n"
                      "    kubernetes: {image: \"a/b:1\"}\n")
    result = run_cli("render", path, "-o", tmp_path / "k8s", "--target", "kubernetes")
    assert result.code == 2
    assert "environment.PW: PW is also a key of the Secret (a ${PW} reference)" in result.err


def test_flower_on_loopback_without_auth_is_refused_for_kubernetes(
        run_cli: Callable[..., Result], write_site: Callable[..., Path], tmp_path: Path) -> None:
    path = write_site(MINIMAL + "    flower: {enabled: true}\n    kubernetes: {image: \"a/b:1\"}\n")
    assert run_cli("render", path, "-o", tmp_path / "units").code == 0
    result = run_cli("render", path, "-o", tmp_path / "k8s", "--target", "kubernetes")
    assert result.code == 2 and "flower.auth: in Kubernetes Flower listens" in result.err


def test_a_site_with_hosts_is_refused_for_kubernetes(run_cli: Callable[..., Result],
                                                     tmp_path: Path) -> None:
    result = run_cli("render", EXAMPLES / "multi-host.yaml", tmp_path / "out", "--target",
                     "kubernetes")
    assert result.code == 2
    assert "hosts: Kubernetes places the pods itself" in result.err
    assert not (tmp_path / "out").exists()
