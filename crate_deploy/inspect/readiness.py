"""Wait until a started fleet is ready: every pool answers a ping on its own queues, and
Flower answers (refusing anyone without the site's credentials).

Used by the foreground launch and by launch --systemd, so both report readiness the
same way; a broker that goes away meanwhile is waited for, as the workers do.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from crate_deploy.inspect import probe
from crate_deploy.plan.placement import runs_beat, runs_flower
from crate_deploy.secrets import Masker
from crate_deploy.site.model import Site
from crate_deploy.state.deployment import flower_credentials

# A pool is pinged once it consumes its control queue (see probe.pool_health), so the
# ping reaches it and the poll ends at its reply; the timeout only bounds a pool too
# busy to answer, and can be generous.
POLL_TIMEOUT = 1.0
POLL_INTERVAL = 0.1


def wait_until_ready(site: Site, urls: list[str], secrets: dict[str, str], mask: Masker, *,
                     timeout: float, alive: Callable[[], bool],
                     say: Callable[[str], None], share: str | None = None) -> bool:
    """True once everything answers; False after `timeout` (said why) or when not alive.

    share: for a site with hosts:, the host whose pools (and Flower) to wait for."""
    app = probe.control_app(urls, timeout=3.0)
    credentials = flower_credentials(site, secrets)
    started, last_report = time.monotonic(), ""
    broker_errors = probe.broker_errors(app)
    try:
        while alive():
            try:
                pools = probe.pool_health(app, site, probe.hostname(), POLL_TIMEOUT,
                                          share=share, bound_only=True)
                health = probe.FleetHealth(pools=pools)
            except broker_errors as exc:  # the broker went away: wait for it, as workers do
                app.close()
                app = probe.control_app(urls, timeout=3.0)
                health = probe.FleetHealth()
                missing = [f"the broker ({mask(str(exc)) or type(exc).__name__})"]
            else:
                if runs_flower(site, share):
                    health.flower = probe.flower_health(site, credentials)
                missing = health.missing()
                if not missing and site.flower.enabled and not probe.flower_lists_workers(
                        site, credentials, [pool.node for pool in health.pools]):
                    missing = ["Flower's worker list (/api/workers)"]
            elapsed = time.monotonic() - started
            if not missing:
                say(f"ready in {elapsed:.1f}s: {summary(site, health, share)}")
                return True
            if elapsed > timeout:
                say(f"error: not ready after {timeout:g}s: {'; '.join(missing)}")
                return False
            report = f"waiting for {', '.join(m.split(' (')[0] for m in missing)}"
            if report != last_report:
                say(f"{report} ({elapsed:.0f}s)")
                last_report = report
            time.sleep(POLL_INTERVAL)
    finally:
        app.close()
    return False


def summary(site: Site, health: probe.FleetHealth, share: str | None = None) -> str:
    parts = [f"{pool.node} on {', '.join(pool.queues)}" for pool in health.pools]
    if runs_beat(site, share):
        parts.append("beat")
    if health.flower:
        parts.append(f"Flower at {health.flower.url} ({health.flower.detail})")
    return "; ".join(parts)
