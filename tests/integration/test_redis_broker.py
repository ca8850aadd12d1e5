"""A fleet on a Redis broker, end to end: launch, tasks and their results, status, stop.

Redis is a broker kombu emulates: a queue is a list that exists only while it holds
messages, and nobody counts its consumers. status must say an empty queue holds 0 (not
"no such queue"), leave consumers unknown rather than a false 0, and not call a queue
whose pool is down stranded. Each test has queue names of its own, in a Redis database
picked at random; the keys it made are deleted afterwards.
"""

from __future__ import annotations

import json
import random
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    DemoSite,
    Launch,
    make_demo_site,
    node,
    run_crate_deploy,
)

pytestmark = pytest.mark.slow

REDIS = "127.0.0.1:6379"


@pytest.fixture
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(f"redis://{REDIS}/0")
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis on {REDIS} ({exc})")
    # An empty database of its own, so nothing left in another (a `celery` queue with
    # messages, say) makes status rightly say "NOT all up".
    empty = [db for db in random.sample(range(1, 16), 15)
             if not redis.Redis.from_url(f"redis://{REDIS}/{db}").dbsize()]
    if not empty:
        pytest.skip(f"no empty Redis database on {REDIS}")
    url = f"redis://{REDIS}/{empty[0]}"
    yield url
    made = redis.Redis.from_url(url).keys()
    if made:
        redis.Redis.from_url(url).delete(*made)


def _redis_site(tmp_path: Path, venv: Path, url: str) -> tuple[DemoSite, dict[str, str]]:
    has_redis = subprocess.run([str(venv / "bin" / "python"), "-c", "import redis"],
                               capture_output=True, check=False)
    assert has_redis.returncode == 0, f"{venv} has no redis client: rebuild it (.ci/app-venvs)"
    tag = uuid.uuid4().hex[:8]
    queues = {"quick": f"rq-{tag}-quick", "slow": f"rq-{tag}-slow", "orphan": f"rq-{tag}-orphan"}
    site = make_demo_site(tmp_path, "unused", venv, {
        "broker": {"urls": [url]},
        "queues": [{"name": name} for name in queues.values()],
        "default_queue": queues["quick"],
        "routes": {"demoapp.slow": queues["slow"]},
        "workers": {"quick": {"queues": [queues["quick"]]}, "slow": {"queues": [queues["slow"]]}},
    })
    return site, queues


def _send(site: DemoSite, quick: int, slow: int, *, wait: bool) -> str:
    """Send demoapp's tasks through the rendered entry module, from the app's own venv;
    with wait, print the node that ran each one (from its result)."""
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import demoapp\n"
        "from crate_deploy_app import app\n"
        f"sent = [demoapp.quick.delay(n) for n in range({quick})]\n"
        f"sent += [demoapp.slow.delay(0.1, n) for n in range({slow})]\n"
        f"print(sorted(r.get(timeout=60)['node'] for r in sent) if {wait} else 'sent')\n")
    result = subprocess.run([str(site.venv / "bin" / "python"), "-c", code, str(site.out),
                             str(site.site_dir)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _status(site: DemoSite) -> tuple[int, dict[str, Any], str]:
    report = run_crate_deploy("status", str(site.out), "--json", timeout=60)
    text = run_crate_deploy("status", str(site.out), timeout=60)
    assert "Traceback" not in report.stderr + text.stderr, report.stderr + text.stderr
    return report.returncode, json.loads(report.stdout), text.stdout


def test_a_redis_fleet_runs_tasks_and_status_tells_the_truth(
        tmp_path: Path, app_venv: Path, redis_url: str) -> None:
    site, queues = _redis_site(tmp_path, app_venv, redis_url)
    with Launch(site):
        code, report, _ = _status(site)
        assert code == 0 and report["up"], report
        depths = {queue["name"]: queue for queue in report["queues"]}
        # Empty lists do not exist in Redis: 0 ready, no error; consumers not counted.
        for name in queues.values():
            assert depths[name]["ready"] == 0 and depths[name]["error"] is None, depths[name]
            assert depths[name]["consumers"] is None, depths[name]
        ran_by = _send(site, quick=6, slow=2, wait=True)
        assert ran_by.count(node("quick")) == 6 and ran_by.count(node("slow")) == 2, ran_by
    # The fleet is down: work waiting for its pool is not stranded; work no pool takes is.
    _send(site, quick=3, slow=0, wait=False)
    import kombu

    with kombu.Connection(redis_url) as connection:
        orphan = connection.SimpleQueue(queues["orphan"])
        for n in range(2):
            orphan.put({"n": n})
        orphan.close()
    code, report, text = _status(site)
    assert code == 1 and not report["up"]
    depths = {queue["name"]: queue["ready"] for queue in report["queues"]}
    assert depths == {queues["quick"]: 3, queues["slow"]: 0, queues["orphan"]: 2}, depths
    assert [queue["name"] for queue in report["stranded"]["queues"]] == [queues["orphan"]]
    assert f"STRANDED {queues['orphan']}: 2 message(s): no pool of this site consumes it" in text
    # requeue works with RabbitMQ only: status does not offer it here.
    assert "requeue" not in text and f"STRANDED {queues['quick']}" not in text, text
