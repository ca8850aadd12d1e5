"""A site on several hosts (`hosts:`): the cross-checks, each host's share of the plan
and of the render, the render command's --host/--all-hosts, and status's host lines."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from crate_deploy.errors import SiteError
from crate_deploy.inspect.hosts import host_lines, host_summary
from crate_deploy.inspect.probe import PoolHealth
from crate_deploy.plan.placement import fleet_nodes
from crate_deploy.plan.services import build_plan
from crate_deploy.render import render_site
from crate_deploy.run.host import same_host
from crate_deploy.site.model import Site
from crate_deploy.site.validate import validate_file
from crate_deploy.target.versions import NEWEST_KNOWN
from tests.conftest import EXAMPLES, Result

MULTI = EXAMPLES / "multi-host.yaml"
HOSTS = ["web1.internal", "web2.internal", "batch1.internal"]
TWO_POOLS = """\
    project: demo
    app: demo.app
    celery: /usr/bin/celery
    broker:
      urls: ["amqp://rabbit.internal:5672//"]
    queues: [{name: a}, {name: b}, {name: c}]
    routes: {demo.tasks.b_*: b}
    workers:
      - name: alpha
        queues: [a]
      - name: beta
        queues: [b]
"""


def messages(path: Path) -> list[str]:
    with pytest.raises(SiteError) as caught:
        validate_file(path)
    return [str(problem).removeprefix(f"{path}:") for problem in caught.value.problems]


def multi_site() -> Site:
    return validate_file(MULTI).site


# --- validation ---------------------------------------------------------------------


def test_multi_host_example_is_valid() -> None:
    assert [host.name for host in multi_site().hosts or []] == HOSTS


def test_every_placement_problem_at_its_line(write_site: Callable[..., Path]) -> None:
    path = write_site(TWO_POOLS + """\
    beat: {enabled: true}
    flower: {enabled: true, port: 5672}
    hosts:
      - name: rabbit.internal
        pools: [alpha, alpah, alpha]
        beat: true
        flower: true
      - name: Rabbit.internal
        pools: [alpha]
        beat: true
        flower: true
      - name: idle
    """)
    assert messages(path) == [
        "7:10: routes.demo.tasks.b_*: routes to queue 'b', which no pool on any host "
        "consumes: add beta to the pools of a host",
        "11:5: workers[1].name: pool 'beta' runs on no host: add it to the pools of a host "
        "under hosts",
        "14:25: flower.port: port 5672 on host rabbit.internal is already used by "
        "broker.urls[0]; give Flower another port",
        "17:20: hosts[0].pools[1]: 'alpah' is not a pool under workers; did you mean 'alpha'?",
        "17:27: hosts[0].pools[2]: pool 'alpha' is listed twice: two nodes named "
        "alpha@rabbit.internal would take each other's replies; list it once (raise its "
        "concurrency for more processes)",
        "20:5: hosts[1].name: host 'Rabbit.internal' is already hosts[0]: its nodes "
        "(POOL@Rabbit.internal) would take the same names; list each host once",
        "22:5: hosts[1].beat: beat already runs on hosts[0] (rabbit.internal): a second beat "
        "would send every periodic task twice; set beat: true on one host only",
        "23:5: hosts[1].flower: Flower already runs on hosts[0] (rabbit.internal): one Flower "
        "sees every host's workers over the broker; set flower: true on one host only",
        "24:5: hosts[2]: host 'idle' runs nothing: name its pools, or set beat: true or "
        "flower: true",
        # The site-wide warning that predates hosts: still comes (after the errors).
        "6:33: queues[2].name: warning: no worker pool consumes queue 'c': tasks sent to it "
        "will wait forever",
    ]


def test_beat_and_flower_need_one_host_and_being_enabled(
        write_site: Callable[..., Path]) -> None:
    path = write_site(TWO_POOLS + """\
    default_queue: a
    beat:
      enabled: true
      schedule:
        - {name: nightly, task: demo.tasks.n, every: 60, queue: c}
    hosts:
      - name: w1
        pools: [alpha, beta]
        flower: true
    """)
    assert messages(path) == [
        "17:54: beat.schedule[0].queue: sends to queue 'c', which no pool on any host "
        "consumes: add it to the queues of a pool that runs on a host",
        "18:1: hosts: beat.enabled is true but no host runs beat: set beat: true on exactly "
        "one host",
        "21:5: hosts[0].flower: Flower is not enabled: set flower.enabled: true, or remove this",
        "6:33: queues[2].name: warning: no worker pool consumes queue 'c': tasks sent to it "
        "will wait forever",
    ]


def test_default_queue_must_be_consumed_on_a_host(write_site: Callable[..., Path]) -> None:
    path = write_site(TWO_POOLS + """\
    default_queue: a
    hosts:
      - name: w1
        pools: [beta]
      - name: w2
        pools: [alpha]
    """)
    validate_file(path)  # alpha consumes a, on w2
    path.write_text(path.read_text().replace("pools: [alpha]", "pools: [beta]"))
    assert messages(path)[:2] == [
        "9:5: workers[0].name: pool 'alpha' runs on no host: add it to the pools of a host "
        "under hosts",
        "13:1: default_queue: the default queue is queue 'a', which no pool on any host "
        "consumes: add alpha to the pools of a host",
    ]


@pytest.mark.parametrize("name", ["-web1", "web1-", "web..1", "web_1", "x" * 64, "a b",
                                  "web1.", ".web1", "w%h", "..", "../etc", "a/b", "web1\nx",
                                  "${HOST}", "web1;reboot", "a" * 254, ""])
def test_host_names_are_host_names(write_site: Callable[..., Path], name: str) -> None:
    path = write_site(TWO_POOLS + f"""\
    hosts:
      - name: {json.dumps(name)}
        pools: [alpha, beta]
    """)
    # Only the name is refused (warnings about the rest of the site may come along).
    assert len([message for message in messages(path) if "warning" not in message]) == 1


# --- the plan and the render ---------------------------------------------------------


def test_each_host_plans_its_share_with_its_node_names() -> None:
    site = multi_site()
    shares = {host: build_plan(site, "/etc/x", host) for host in HOSTS}
    assert {host: [s.name for s in plan.services] for host, plan in shares.items()} == {
        "web1.internal": ["crate-worker-consent", "crate-beat", "crate-flower"],
        "web2.internal": ["crate-worker-consent"],
        "batch1.internal": ["crate-worker-maintenance"]}
    consent = shares["web2.internal"].services[0]
    assert "--hostname=consent@web2.internal" in consent.argv
    assert consent.readiness.node == "consent@web2.internal"
    assert consent.hosts == ("web1.internal", "web2.internal")
    assert shares["web1.internal"].service("crate-beat").hosts == ("web1.internal",)
    whole = [(n.name, n.host) for n in fleet_nodes(site, "anywhere")]
    assert whole == [("consent@web1.internal", "web1.internal"),
                     ("consent@web2.internal", "web2.internal"),
                     ("maintenance@batch1.internal", "batch1.internal")]
    assert [n.name for n in fleet_nodes(site, "anywhere", "web2.internal")] == [
        "consent@web2.internal"]


def test_a_site_without_hosts_keeps_h_for_the_machine_name() -> None:
    site = multi_site().model_copy(update={"hosts": None})
    plan = build_plan(site, "/etc/x")
    assert "--hostname=consent@%h" in plan.services[0].argv
    assert [n.name for n in fleet_nodes(site, "box")] == ["consent@box", "maintenance@box"]


@pytest.mark.parametrize("host", HOSTS)
def test_a_share_differs_from_the_single_host_render_only_by_placement(host: str) -> None:
    site = multi_site()
    single = {f.path: f.content for f in render_site(
        site.model_copy(update={"hosts": None}), str(MULTI), "/etc/x", NEWEST_KNOWN).files}
    share = {f.path: f.content for f in render_site(site, str(MULTI), "/etc/x", NEWEST_KNOWN,
                                                    host=host).files}
    placed = [f"{s.name}.service" for s in build_plan(site, "/etc/x", host).services]
    units = {f"systemd/{unit}" for unit in placed}
    assert set(share) == {path for path in single
                          if not path.startswith(("systemd/", "flowerconfig"))} | units | {
        "systemd/crate.target"} | ({"flowerconfig.py"} if "crate-flower.service" in placed
                                   else set())
    for path, content in share.items():
        expected = single[path]
        if path == "deployment.json":
            document, before = json.loads(content), json.loads(expected)
            assert document.pop("host") == host
            assert document["site"].pop("hosts") == [h.model_dump() for h in site.hosts or []]
            assert document.pop("services") == placed
            before.pop("services")
            assert document == before
            continue
        if path.startswith("systemd/crate-worker-"):
            expected = re.sub(r'"--hostname=(\w+)@%%h"', rf"--hostname=\1@{host}", expected)
        if path == "systemd/crate.target":
            expected = re.sub(r"(?m)^Wants=.*$", "Wants=" + " ".join(placed), expected)
        assert content == expected, path


# --- the render command ---------------------------------------------------------------


def test_render_all_hosts_and_one_host(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("render", MULTI, "-o", out, "--all-hosts")
    assert result.code == 0, result.err
    assert sorted(p.name for p in (out / "hosts").iterdir()) == sorted(HOSTS)
    assert (out / "hosts" / "web1.internal" / "systemd" / "crate-beat.service").is_file()
    assert not (out / "hosts" / "web2.internal" / "flowerconfig.py").exists()
    document = json.loads((out / "hosts" / "batch1.internal" / "deployment.json").read_text())
    assert (document["host"], document["services"]) == ("batch1.internal",
                                                        ["crate-worker-maintenance.service"])
    one = tmp_path / "one"
    assert run_cli("render", MULTI, "-o", one, "--host", "web2.internal").code == 0
    for path in (out / "hosts" / "web2.internal").rglob("*"):
        if path.is_file() and path.name != ".crate-deploy-manifest.json":
            relative = path.relative_to(out / "hosts" / "web2.internal")
            assert (one / relative).read_text() == path.read_text()
    again = run_cli("render", MULTI, "-o", out, "--all-hosts", "--check")
    assert again.code == 0 and "0 file(s) would change" in again.out
    whole = run_cli("status", out)
    assert whole.code == 2
    assert f"{out} holds every host's share (render --all-hosts): give one" in whole.err


def test_render_refuses_what_placement_does_not_allow(run_cli: Callable[..., Result],
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = [
        ((MULTI,), "the site places its services on hosts (web1.internal, web2.internal, "
                   "batch1.internal): render one host's share with --host NAME"),
        ((MULTI, "--host", "web3.internal"), "--host web3.internal: no such host in the "
                                             "site's hosts: section; did you mean"),
        ((MULTI, "--host", "web1.internal", "--all-hosts"), "not both"),
        ((EXAMPLES / "minimal.yaml", "--all-hosts"), "the site has no hosts: section"),
    ]
    for args, message in cases:
        result = run_cli("render", *args, "-o", out)
        assert (result.code, message in result.err) == (2, True), result.err
        assert not out.exists()


def test_render_all_hosts_notes_a_host_the_site_dropped(run_cli: Callable[..., Result],
                                                        tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "hosts" / "web9.internal").mkdir(parents=True)
    result = run_cli("render", MULTI, "-o", out, "--all-hosts")
    assert result.code == 0
    assert "is the share of host web9.internal, which the site no longer has" in result.err


def test_launch_refuses_another_hosts_share(run_cli: Callable[..., Result],
                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("render", MULTI, "-o", out, "--host", "batch1.internal").code == 0
    result = run_cli("launch", out)
    assert result.code == 1
    assert (f"is the share of host batch1.internal, but this machine is "
            f"{socket.gethostname()}") in result.err


def test_same_host_ignores_case_and_the_domain_only_when_one_side_lacks_it() -> None:
    assert same_host("WEB1", "web1")
    assert same_host("web1", "web1.example.org")
    assert same_host("web1.example.org", "web1")
    assert not same_host("web1.example.org", "web1.other.org")
    assert not same_host("web2", "web1")


# --- status -----------------------------------------------------------------------------


def test_status_names_the_host_of_a_pool_that_is_down() -> None:
    site = multi_site()
    pools = [PoolHealth(n.pool, n.name, n.host != "web2.internal", list(n.queues)
                        if n.host != "web2.internal" else [], list(n.queues), n.host)
             for n in fleet_nodes(site, "x")]
    hosts = host_summary(site, pools, "batch1.internal", None, beat_up=False)
    lines = host_lines(hosts)
    assert [host["up"] for host in hosts] == [True, False, True]
    assert lines[1].split()[:5] == ["host", "web2.internal", "DOWN", "pool", "consent"]
    assert "beat not checked from here" in lines[0]
    assert "Flower not checked from here" in lines[0]
    on_beat_host = host_lines(host_summary(site, pools, "web1.internal", None, beat_up=False))
    assert on_beat_host[0].split()[:3] == ["host", "web1.internal", "DOWN"]
    assert "beat DOWN" in on_beat_host[0]
