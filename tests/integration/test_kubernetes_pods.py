"""The rendered Kubernetes containers, run here as a kubelet would run them (pods.py),
against the real RabbitMQ in a vhost of their own, on Celery 5.2.7 and 5.7.0.

What it shows: every container's command, environment and probes work as written
(read-only root, emptyDirs, the ConfigMap's files only, no capabilities,
secrets from secretKeyRefs); the startup probe passes for a live node and fails for
a stopped one; the liveness probe passes without touching the broker; SIGTERM to the
container's main process, as the kubelet sends it, lets a running task finish and be
acknowledged within terminationGracePeriodSeconds, nothing lost.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crate_deploy.inspect.probe import http_status
from tests.integration.conftest import (
    QUEUES,
    DemoSite,
    descendants,
    make_demo_site,
    run_crate_deploy,
    task_client,
    wait_for,
)
from tests.integration.pods import Pod
from tests.kube import manifests, of_kind, read_env_file

pytestmark = pytest.mark.slow


@pytest.fixture
def scratch() -> Iterator[Path]:
    """Outside /tmp, which each pod covers with its own emptyDir; readable by the pods'
    non-root user."""
    path = Path(tempfile.mkdtemp(prefix="crate-deploy-k8s-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cluster(scratch: Path, vhost: str, app_venv: Path) -> Iterator[dict[str, Any]]:
    """The demo site rendered for Kubernetes, and a way to start its pods (all stopped at
    the end, whatever happened)."""
    site = make_demo_site(scratch, vhost, app_venv)
    out = scratch / "k8s"
    result = run_crate_deploy("render", str(site.site_file), "-o", str(out), "--target",
                              "kubernetes", timeout=120)
    assert result.returncode == 0, result.stderr
    files = {str(p.relative_to(out)): p.read_text() for p in out.rglob("*.yaml")}
    documents = manifests(files)
    (config_map,) = of_kind(documents, "ConfigMap").values()
    secrets = {"demo-secrets": read_env_file(Path(site.site["secrets_file"]))}
    pods: list[Pod] = []

    def start(deployment: str, name: str) -> Pod:
        pod = Pod(of_kind(documents, "Deployment")[deployment], name, secrets,
                  config_map["data"], scratch).start()
        pods.append(pod)
        return pod

    try:
        yield {"site": site, "start": start, "config_map": config_map, "out": out}
    finally:
        for pod in pods:
            if pod.proc is not None and pod.proc.poll() is None:
                pod.terminate()
            pod.kill()
            assert not descendants(pod.pid), f"{pod.name} left processes behind"


def test_rendered_pods_start_probe_and_stop_warmly(cluster: dict[str, Any]) -> None:
    site: DemoSite = cluster["site"]
    start = cluster["start"]
    # The ConfigMap holds the very files the systemd render put in its directory.
    for name, content in cluster["config_map"]["data"].items():
        assert (site.out / name).read_text() == content
    quick = start("demo-worker-quick", "demo-worker-quick-6d4f9c7b8-q1x2z")
    slow = start("demo-worker-slow", "demo-worker-slow-5b8c6d9f7-s3y4w")
    beat = start("demo-beat", "demo-beat-7c9d8b6f5-b5v6u")
    flower = start("demo-flower", "demo-flower-8d7c6b5a4-f7t8r")

    # The main process is the program itself, exec'd: no shell or unshare left over.
    wait_for(slow.runs_its_command, 30, what="the exec chain to end in celery",
             describe=lambda: str(slow.running_program()))
    for pod in (quick, slow):
        assert pod.wait_probe("startupProbe", within=240) == 0, pod.log()[-3000:]
        assert pod.wait_probe("livenessProbe", within=60) == 0, pod.log()[-3000:]
    assert beat.wait_probe("startupProbe", within=120) == 0, beat.log()[-3000:]
    assert beat.probe("livenessProbe") == 0
    assert flower.wait_probe("readinessProbe", within=120) == 0, flower.log()[-3000:]
    assert flower.probe("livenessProbe") == 0
    _flower_demands_its_password(flower, site)

    with task_client(site) as client:
        # The node names come from the pods' names, as the probes expect.
        replies = client.inspect(timeout=5).ping() or {}
        assert {f"quick@{quick.name}", f"slow@{slow.name}"} <= set(replies), replies
        seconds = 12.0
        result = client.send("demoapp.slow", QUEUES["slow"], seconds=seconds, value=7)
        wait_for(lambda: client.active(QUEUES["slow"]), 60, what="the slow task running",
                 describe=slow.log)
        # The kubelet's stop: SIGTERM to the container's main process, SIGKILL after grace.
        stopped_at = time.monotonic()
        status = slow.terminate()
        took = time.monotonic() - stopped_at
        assert status == 0, f"exit {status} after {took:.1f}s:\n{slow.log()[-3000:]}"
        assert took < slow.grace
        # The running task finished during the warm shutdown and was acknowledged:
        done = result.get(timeout=30)  # (it names the host too)
        assert (done["value"], done["node"]) == (7, f"slow@{slow.name}")
        assert _messages_in_queue(client, QUEUES["slow"]) == 0  # not requeued: none lost
        assert "Warm shutdown" in slow.log() or "warm shutdown" in slow.log().lower()

        # The same startup probe, for the node now stopped, fails (and for a live one, passes).
        assert slow.probe("startupProbe") != 0
        assert quick.probe("startupProbe") == 0
        # Liveness reads a heartbeat file, not the broker: no inspect, no Celery import.
        assert "inspect" not in " ".join(quick.spec["livenessProbe"]["exec"]["command"])


def _flower_demands_its_password(flower: Pod, site: DemoSite) -> None:
    port = flower.spec["ports"][0]["containerPort"]
    # On the pod's every address (its Service reaches the pod IP), not the site's loopback.
    assert ("0.0.0.0", port) in _listening(), f"Flower not on 0.0.0.0:{port}"
    url = f"http://127.0.0.1:{port}/api/workers"
    assert http_status(url) == 401
    assert http_status(url, (site.flower_user, "not-the-password")) == 401
    assert http_status(url, (site.flower_user, site.flower_password), timeout=30) == 200


def _listening() -> set[tuple[str, int]]:
    """IPv4 TCP sockets listening on this machine, as (address, port)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A":  # LISTEN
            address, port = local.split(":")
            octets = [str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)]
            found.add((".".join(octets), int(port, 16)))
    return found


def _messages_in_queue(client: Any, queue: str) -> int:
    """Ready plus unacknowledged: with no consumer left, a task not acked would be back."""
    with client.app.connection_for_write() as connection:
        _, messages, _ = connection.default_channel.queue_declare(queue=queue, passive=True)
        return int(messages)


def test_every_container_runs_as_rendered(cluster: dict[str, Any]) -> None:
    """What runs is exactly the manifest's command, expanded as the kubelet expands it,
    with the pod's name as HOSTNAME and only the secrets its manifest names."""
    start = cluster["start"]
    slow = start("demo-worker-slow", "demo-worker-slow-1a2b3c4d5-zz9yy")
    assert slow.wait_probe("startupProbe", within=240) == 0, slow.log()[-3000:]
    environ = dict(
        entry.split("=", 1) for entry in
        Path(f"/proc/{slow.pid}/environ").read_bytes().decode().split("\0") if "=" in entry)
    assert environ["HOSTNAME"] == slow.name
    assert "FLOWER_PASSWORD" not in environ  # the worker's manifest does not name it
    assert environ["BROKER_PASSWORD"] == cluster["site"].broker_password
    assert slow.runs_its_command(), slow.running_program()
