"""`crate-deploy status`: what is up, what each queue holds; exit 0 only if all is up."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from crate_deploy.errors import LaunchError
from crate_deploy.inspect import cluster, probe
from crate_deploy.inspect.hosts import flower_status, host_lines, host_summary
from crate_deploy.inspect.stranded import StrandedQueue, stranded_queues
from crate_deploy.plan.names import beat_unit
from crate_deploy.plan.placement import runs_beat
from crate_deploy.secrets import Masker
from crate_deploy.state.app_queues import app_queues
from crate_deploy.state.deployment import (
    Deployment,
    broker_urls,
    flower_credentials,
    load_deployment,
    masker_for,
    read_secrets,
)
from crate_deploy.state.launch import orphans, read_launch_state, started_at


def status_command(directory: Path, *, as_json: bool, timeout: float = 1.0) -> int:
    deployment = load_deployment(directory)
    site = deployment.site
    secrets = read_secrets(site)
    mask = masker_for(secrets)
    urls = broker_urls(site, secrets)
    report: dict[str, Any] = {"project": site.project, "directory": str(directory)}
    try:
        probe.check_broker(urls, mask, timeout=3.0)
    except LaunchError as exc:
        report["broker"] = {"reachable": False, "error": str(exc)}
        return _finish(report, as_json, mask, up=False)
    nodes = cluster.broker_nodes(urls, mask) if len(urls) > 1 else []
    report["broker"] = {"reachable": True, "urls": [mask(url) for url in urls],
                        "nodes": [asdict(node) for node in nodes]}
    nodes_fail, report["warnings"] = cluster.down_verdict(nodes, site.broker.tolerate_down)
    app = probe.control_app(urls, timeout=3.0)
    try:
        health, brokers, (stranded, looked) = _ask_the_fleet(app, deployment, urls, secrets,
                                                             timeout)
    except probe.broker_errors(app) as exc:  # lost the broker after check_broker
        error = f"lost the broker connection: {mask(str(exc)) or type(exc).__name__}"
        report["broker"] = {"reachable": False, "error": error}
        return _finish(report, as_json, mask, up=False)
    finally:
        app.close()
    report.update(pools=[asdict(pool) | {"up": pool.up, "broker": brokers.get(pool.node)}
                         for pool in health.pools],
                  queues=[asdict(queue) for queue in health.queues],
                  flower=asdict(health.flower) if health.flower else None)
    processes = _processes(deployment)
    report["processes"] = processes
    report["stranded"] = {"queues": [asdict(queue) for queue in stranded], "found_by": looked}
    beat_up = _beat_up(deployment, processes)
    beat_here = runs_beat(site, deployment.host)  # beat answers no ping: seen on its host only
    if beat_here:
        report["beat"] = {"up": beat_up}
    up = not health.missing() and (beat_up or not beat_here) and not nodes_fail and not stranded
    if site.hosts:
        report["hosts"] = host_summary(site, health.pools, deployment.host, health.flower,
                                       beat_up)
    return _finish(report, as_json, mask, up=up)


def _ask_the_fleet(app: Any, deployment: Deployment, urls: list[str], secrets: dict[str, str],
                   timeout: float) -> tuple[probe.FleetHealth, dict[str, str],
                                            tuple[list[StrandedQueue], str]]:
    """The pools and queues (from the broker), which broker node each worker is on, the
    stranded queues, and Flower (over HTTP, asked in the meantime, not after)."""
    site = deployment.site
    with ThreadPoolExecutor(max_workers=1) as background:
        flower = background.submit(flower_status, site, deployment.host,
                                   flower_credentials(site, secrets))
        health = probe.FleetHealth(
            pools=probe.pool_health(app, site, probe.hostname(), timeout),
            queues=probe.queue_depths(app, site, timeout))
        answering = [pool.node for pool in health.pools if pool.answering]
        # Which node each worker is on matters only where there are several.
        brokers = cluster.worker_brokers(app, answering, timeout) if len(urls) > 1 else {}
        stranded = stranded_queues(app, site, urls, app_queues(deployment))
        health.flower = flower.result()
    return health, brokers, stranded


def _processes(deployment: Deployment) -> dict[str, dict[str, Any]]:
    """Each service's state, main pid and since when (ISO 8601, UTC): from a foreground
    launch's state file, else from systemd."""
    state = read_launch_state(deployment)
    if state is not None:
        return {name: {"state": "running" if alive else "stopped", "pid": pid,
                       "since": _iso(started_at(pid)) if alive else None}
                for name, (pid, alive) in state.items()}
    living = orphans(deployment)
    if living:  # its launch was killed: they run unsupervised
        return {name: {"state": "orphaned", "pid": pid, "since": _iso(started_at(pid)),
                       "detail": "its launch is gone; `crate-deploy stop` stops it"}
                for name, pid in living.items()}
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        scope = ["--user"] if deployment.site.systemd.scope == "user" else []
        return {unit: _unit_state(unit, scope) for unit in deployment.units}
    return {}


def _unit_state(unit: str, scope: list[str]) -> dict[str, Any]:
    # The monotonic timestamp, not ActiveEnterTimestamp: its text form depends on the
    # locale and time zone, and --timestamp=unix needs systemd 251.
    result = subprocess.run(["systemctl", *scope, "show", "--property=ActiveState,SubState,"
                             "MainPID,ActiveEnterTimestampMonotonic", unit],
                            capture_output=True, text=True, check=False)
    found = dict(line.partition("=")[::2] for line in result.stdout.splitlines())
    pid = int(found.get("MainPID") or 0)
    entered = int(found.get("ActiveEnterTimestampMonotonic") or 0)  # microseconds
    since = time.time() - (time.monotonic() - entered / 1e6) if entered else None
    return {"state": found.get("ActiveState") or "unknown", "sub_state": found.get("SubState"),
            "pid": pid or None, "since": _iso(since)}


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="seconds")



def _beat_up(deployment: Deployment, processes: dict[str, dict[str, Any]]) -> bool:
    # By the layout's own name: a pool called nightly-beat is no beat.
    unit = beat_unit(deployment.site)
    process = processes.get(unit) or processes.get(unit.removesuffix(".service")) or {}
    return process.get("state") in ("running", "active", "orphaned")


def _finish(report: dict[str, Any], as_json: bool, mask: Masker, *, up: bool) -> int:
    report["up"] = up
    if as_json:
        click.echo(mask(json.dumps(report, indent=2)))
    else:
        click.echo(mask(_text(report)))
    return 0 if up else 1


def _text(report: dict[str, Any]) -> str:
    """The report as aligned columns: KIND  NAME  STATE  DETAIL."""
    lines = [f"{report['project']}: {'all up' if report['up'] else 'NOT all up'}"]
    broker = report["broker"]
    if not broker["reachable"]:
        lines.append(f"broker   DOWN  {broker['error']}")
        return "\n".join(lines)
    rows = [("broker", "", "up", ", ".join(broker["urls"]))]
    rows += [("node", node["address"], "up" if node["up"] else "DOWN", node["error"] or "")
             for node in broker.get("nodes", [])]
    for pool in report["pools"]:
        state = "up" if pool["up"] else ("WRONG QUEUES" if pool["answering"] else "DOWN")
        on = f" on {pool['broker']}" if pool.get("broker") else ""
        rows.append(("pool", pool["name"], state, f"{pool['node']}{on}  queues: "
                     f"{', '.join(pool['queues']) or '-'} (site: {', '.join(pool['expected'])})"))
    if "beat" in report:
        rows.append(("beat", "", "up" if report["beat"]["up"] else "DOWN", ""))
    if report["flower"]:
        flower = report["flower"]
        rows.append(("flower", "", "up" if flower["up"] else "DOWN",
                     f"{flower['url']}  {flower['detail']}"))
    for name, process in report["processes"].items():
        detail = f"pid {process['pid']}" if process["pid"] else ""
        if process["since"]:
            detail += f"  since {process['since']}"
        if process.get("detail"):
            detail += f"  ({process['detail']})"
        rows.append(("process", name, process["state"], detail))
    lines.extend(_columns(rows))
    lines.extend(f"warning: {warning}" for warning in report.get("warnings", []))
    lines.append("")
    width = max([len("queue"), *(len(queue["name"]) for queue in report["queues"])])
    lines.append(f"{'queue':<{width}} {'ready':>7} {'unacked':>8} {'consumers':>10}")
    for queue in report["queues"]:
        ready = "-" if queue["ready"] is None else queue["ready"]
        consumers = "-" if queue["consumers"] is None else queue["consumers"]
        note = f"  ({queue['error']})" if queue["error"] else ""
        lines.append(f"{queue['name']:<{width}} {ready:>7} {queue['unacked']:>8} "
                     f"{consumers:>10}{note}")
    lines.extend(host_lines(report.get("hosts", [])))
    lines.extend(_stranded_lines(report.get("stranded")))
    return "\n".join(lines)


def _columns(rows: list[tuple[str, str, str, str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return [f"{kind:<{widths[0]}}  {name:<{widths[1]}}  {state:<{widths[2]}}  {detail}".rstrip()
            for kind, name, state, detail in rows]


def _stranded_lines(stranded: dict[str, Any] | None) -> list[str]:
    if not stranded:
        return []
    return [_stranded_line(queue) for queue in stranded["queues"]]


def _stranded_line(queue: dict[str, Any]) -> str:
    # Consumers are counted, and requeue can move messages, on RabbitMQ only (not Redis).
    rabbitmq = queue.get("consumers") is not None
    return (f"STRANDED {queue['name']}: {queue['ready']} message(s)"
            f"{' and no consumer' if rabbitmq else ''}: no pool of this site consumes it "
            "(`crate-deploy check` names the tasks sent there"
            + (f"; `crate-deploy requeue --stranded {queue['name']}` moves them)" if rabbitmq
               else ")"))
