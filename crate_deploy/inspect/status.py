"""`crate-deploy status`: what is up, what each queue holds; exit 0 only if all is up."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from crate_deploy.errors import LaunchError
from crate_deploy.inspect import probe
from crate_deploy.inspect.check import app_queues
from crate_deploy.inspect.stranded import stranded_queues
from crate_deploy.secrets import Masker
from crate_deploy.state.deployment import (
    Deployment,
    broker_urls,
    flower_credentials,
    load_deployment,
    masker_for,
    read_secrets,
)
from crate_deploy.state.launch import read_launch_state


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
    report["broker"] = {"reachable": True, "urls": [mask(url) for url in urls]}
    app = probe.control_app(urls, timeout=3.0)
    try:
        health = probe.FleetHealth(
            pools=probe.pool_health(app, site, probe.hostname(), timeout),
            queues=probe.queue_depths(app, site, timeout),
            flower=probe.flower_health(site, flower_credentials(site, secrets))
            if site.flower.enabled else None)
        stranded, looked = stranded_queues(app, site, urls, app_queues(deployment))
    except probe.broker_errors(app) as exc:  # lost the broker after check_broker
        error = f"lost the broker connection: {mask(str(exc)) or type(exc).__name__}"
        report["broker"] = {"reachable": False, "error": error}
        return _finish(report, as_json, mask, up=False)
    finally:
        app.close()
    report.update(pools=[asdict(pool) | {"up": pool.up} for pool in health.pools],
                  queues=[asdict(queue) for queue in health.queues],
                  flower=asdict(health.flower) if health.flower else None)
    processes = _processes(deployment)
    report["processes"] = processes
    report["stranded"] = {"queues": [asdict(queue) for queue in stranded], "found_by": looked}
    beat_up = _beat_up(deployment, processes)
    if site.beat.enabled:
        report["beat"] = {"up": beat_up}
    up = not health.missing() and (beat_up or not site.beat.enabled) and not stranded
    return _finish(report, as_json, mask, up=up)


def _processes(deployment: Deployment) -> dict[str, str]:
    """Each service's state: from a foreground launch's state file, else from systemd."""
    state = read_launch_state(deployment)
    if state is not None:
        return {name: ("running" if alive else "stopped") + f" (pid {pid})"
                for name, (pid, alive) in state.items()}
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        scope = ["--user"] if deployment.site.systemd.scope == "user" else []
        return {unit: _unit_state(unit, scope) for unit in deployment.units}
    return {}


def _unit_state(unit: str, scope: list[str]) -> str:
    result = subprocess.run(["systemctl", *scope, "show", "--property=ActiveState,SubState",
                             "--value", unit], capture_output=True, text=True, check=False)
    return " ".join(result.stdout.split()) or "unknown"


def _beat_up(deployment: Deployment, processes: dict[str, str]) -> bool:
    beat = next((name for name in processes if "-beat" in name), None)
    return beat is not None and processes[beat].startswith(("running", "active"))


def _finish(report: dict[str, Any], as_json: bool, mask: Masker, *, up: bool) -> int:
    report["up"] = up
    if as_json:
        click.echo(mask(json.dumps(report, indent=2)))
    else:
        click.echo(mask(_text(report)))
    return 0 if up else 1


def _text(report: dict[str, Any]) -> str:
    lines = [f"{report['project']}: {'all up' if report['up'] else 'NOT all up'}"]
    broker = report["broker"]
    if not broker["reachable"]:
        lines.append(f"broker   DOWN  {broker['error']}")
        return "\n".join(lines)
    lines.append(f"broker   up    {', '.join(broker['urls'])}")
    for pool in report["pools"]:
        state = "up" if pool["up"] else ("WRONG QUEUES" if pool["answering"] else "DOWN")
        lines.append(f"pool     {pool['name']:<12} {state:<5} {pool['node']}  queues: "
                     f"{', '.join(pool['queues']) or '-'} (site: {', '.join(pool['expected'])})")
    lines.append(f"{'queue':<24} {'ready':>7} {'unacked':>8} {'consumers':>10}")
    for queue in report["queues"]:
        ready = "-" if queue["ready"] is None else queue["ready"]
        consumers = "-" if queue["consumers"] is None else queue["consumers"]
        note = f"  ({queue['error']})" if queue["error"] else ""
        lines.append(f"{queue['name']:<24} {ready:>7} {queue['unacked']:>8} {consumers:>10}{note}")
    if "beat" in report:
        lines.append(f"beat     {'up' if report['beat']['up'] else 'DOWN'}")
    if report["flower"]:
        flower = report["flower"]
        lines.append(f"flower   {'up' if flower['up'] else 'DOWN':<5} {flower['url']}  "
                     f"{flower['detail']}")
    for name, state in report["processes"].items():
        lines.append(f"process  {name:<36} {state}")
    lines.extend(_stranded_lines(report.get("stranded")))
    return "\n".join(lines)


def _stranded_lines(stranded: dict[str, Any] | None) -> list[str]:
    if not stranded:
        return []
    return [f"STRANDED {queue['name']}: {queue['ready']} message(s) and no consumer: no pool "
            f"of this site consumes it (`crate-deploy check` names the tasks sent there; "
            f"`crate-deploy requeue --stranded {queue['name']}` moves them)"
            for queue in stranded["queues"]]
