"""Support for the fault tests (test_faults.py); conftest.py's fixtures do the rest.

- FAULT_APP: a small application whose tasks leave a line in a file each time they
  start and each time they finish, so completions (and runs twice over) are counted on
  disk, independent of the broker and of any result backend, which a broker restart
  would disturb.
- fault_site(): the demo site of conftest.py turned into a one-pool site running
  FAULT_APP (no beat, no Flower: the faults are the pools' business).
- Publisher: a Celery client built from the rendered config (publisher confirms,
  durable queues, persistent delivery, the queues' own arguments), counting what the
  broker confirmed and what raised.
- broker_outage(): `rabbitmqctl stop_app` ... `start_app` (always, in a finally).
- record(): prints a `RELIABILITY|...` line per case (and appends it to the file named
  by $CRATE_DEPLOY_RELIABILITY_LOG), from which docs/reliability.md's table is made:

      .venv/bin/python -m pytest tests/integration/test_faults.py -m slow -s | \\
          .venv/bin/python -m tests.integration.fault_support
"""

from __future__ import annotations

import contextlib
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.conftest import DemoSite, make_demo_site
from tests.rabbit import BROKER

FAULT_APP = '''\
"""Tasks for crate-deploy's fault tests: every start and every finish is a line in a file
(OUT/KEY.start, OUT/KEY.done: "pid time"), appended, so a task run twice shows twice."""

import os
import signal
import time

from celery import Celery

app = Celery("faultapp")  # everything else comes from crate-deploy's rendered settings


def _note(out, key, what):
    with open(os.path.join(out, f"{key}.{what}"), "a") as file:
        file.write(f"{os.getpid()} {time.time():.3f}\\n")


@app.task
def work(key, out, seconds=0.0):
    """A task that takes a while."""
    _note(out, key, "start")
    time.sleep(seconds)
    _note(out, key, "done")
    return key


@app.task
def quick(key, out):
    _note(out, key, "start")
    _note(out, key, "done")
    return key


@app.task
def poison(key, out):
    """Kills the pool process that runs it, every time: a poison message."""
    _note(out, key, "start")
    os.kill(os.getpid(), signal.SIGKILL)
'''

PROJECT = "fault"
POOL = "w"
QUEUE = "work"
SERVICE = f"{PROJECT}-worker-{POOL}"
RECORD_PREFIX = "RELIABILITY|"
RECORD_FIELDS = ("case", "celery", "sent", "in_flight", "completed", "lost", "recovery_s",
                 "notes")


def fault_site(tmp: Path, vhost: str, venv: Path, *, concurrency: int = 2,
               prefetch: int = 1, queue: Mapping[str, Any] | None = None,
               overrides: Mapping[str, Any] | None = None,
               broker_host: str = BROKER) -> DemoSite:
    """A site with one pool `w` on one queue `work`, running FAULT_APP, rendered."""
    changes: dict[str, Any] = {
        "project": PROJECT,
        "app": "faultapp",
        "queues": [{"name": QUEUE, **(queue or {})}],
        "default_queue": QUEUE,
        "routes": {"demoapp.slow": QUEUE},  # merged into the demo's; removed below
        "workers": [{"name": POOL, "queues": [QUEUE], "concurrency": concurrency,
                     "prefetch_multiplier": prefetch}],
        "beat": {"enabled": False, "schedule": []},
        "flower": {"enabled": False},
        **(overrides or {}),
    }
    # The whole fault suite under another delivery profile, on demand (reliability.md):
    # CRATE_DEPLOY_FAULT_DELIVERY=fast; a test that names its own profile keeps it.
    if (forced := os.environ.get("CRATE_DEPLOY_FAULT_DELIVERY")) and "delivery" not in changes:
        changes["delivery"] = forced
    site = make_demo_site(tmp, vhost, venv, changes, broker_host=broker_host)
    # make_demo_site merges mappings into the demo's, so only a render can drop its route.
    site.rerender(lambda data: data.update(routes={}))
    # render does not import the application: the module can follow it.
    (site.site_dir / "faultapp.py").write_text(FAULT_APP, encoding="utf-8")
    return site


def celery_version(venv: Path) -> str:
    result = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import celery; print(celery.__version__)"],
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip()


# --- what the tasks left behind ---------------------------------------------------------


@dataclass
class Ledger:
    """The directory the tasks write their start and done lines into."""

    directory: Path

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def _lines(self, key: str, what: str) -> list[tuple[int, float]]:
        try:
            text = (self.directory / f"{key}.{what}").read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [(int(pid), float(at)) for pid, at in
                (line.split() for line in text.splitlines() if line.strip())]

    def starts(self, key: str) -> list[tuple[int, float]]:
        return self._lines(key, "start")

    def dones(self, key: str) -> list[tuple[int, float]]:
        return self._lines(key, "done")

    def completed(self, keys: list[str]) -> list[str]:
        return [key for key in keys if self.dones(key)]

    def running(self, keys: list[str]) -> list[str]:
        """Keys started (at least once) and not yet done."""
        return [key for key in keys if self.starts(key) and not self.dones(key)]

    def run_twice(self, keys: list[str]) -> list[str]:
        return [key for key in keys if len(self.dones(key)) > 1]

    def first_done_after(self, keys: list[str], moment: float) -> float | None:
        """Wall-clock time of the first completion after moment (time.time())."""
        times = [at for key in keys for _, at in self.dones(key) if at >= moment]
        return min(times) if times else None

    def first_start_after(self, keys: list[str], moment: float) -> float | None:
        """Wall-clock time of the first start after moment (time.time())."""
        times = [at for key in keys for _, at in self.starts(key) if at >= moment]
        return min(times) if times else None

    def last_done(self, keys: list[str]) -> float | None:
        times = [at for key in keys for _, at in self.dones(key)[:1]]
        return max(times) if times else None

    def wait_completed(self, keys: list[str], timeout: float) -> list[str]:
        """Wait until every key is done or timeout passes; return those not done."""
        deadline = time.monotonic() + timeout
        while (missing := [k for k in keys if not self.dones(k)]) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        return missing


# --- the publisher ----------------------------------------------------------------------

# What a publisher needs of the rendered settings (the rest is for the workers).
_CLIENT_SETTINGS = (
    "broker_transport_options", "broker_heartbeat", "broker_connection_timeout",
    "task_serializer", "accept_content", "task_default_delivery_mode", "task_queues",
    "task_default_queue", "task_default_exchange", "task_default_routing_key",
    "task_create_missing_queues", "task_routes",
)


def rendered_client_settings(site: DemoSite) -> dict[str, Any]:
    """The rendered config (plain literals) as a publisher would use it."""
    rendered = runpy.run_path(str(site.out / "crate_deploy_celeryconfig.py"))
    settings = {key: rendered[key] for key in _CLIENT_SETTINGS if key in rendered}
    settings.update(broker_url=site.broker_url, broker_connection_retry_on_startup=True,
                    result_backend=None, task_ignore_result=True)
    return settings


@dataclass
class Publisher:
    """Sends FAULT_APP tasks with the rendered settings; counts confirmed and raised."""

    site: DemoSite
    ledger: Ledger
    queue: str = QUEUE
    confirmed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from celery import Celery

        self.app = Celery("crate-deploy-fault-publisher", set_as_current=False)
        self.app.conf.update(rendered_client_settings(self.site))
        assert self.app.conf.broker_transport_options.get("confirm_publish") is True
        self._lock = threading.Lock()
        self._count = 0

    def close(self) -> None:
        self.app.close()

    def next_key(self, prefix: str) -> str:
        with self._lock:
            self._count += 1
            return f"{prefix}{self._count:05d}"

    def send(self, task: str, key: str, **kwargs: Any) -> bool:
        """Publish one task; True once the broker confirmed it, False if the publish raised
        (then it is the publisher's to retry, not a loss)."""
        try:
            self.app.send_task(f"faultapp.{task}", queue=self.queue,
                               kwargs={"key": key, "out": str(self.ledger.directory), **kwargs})
        except Exception as exc:  # any failure to publish: not confirmed
            with self._lock:
                self.failed.append(key)
                self.errors.append(f"{type(exc).__name__}: {exc}")
            return False
        with self._lock:
            self.confirmed.append(key)
        return True

    def send_many(self, task: str, prefix: str, count: int, **kwargs: Any) -> list[str]:
        keys = [self.next_key(prefix) for _ in range(count)]
        for key in keys:
            assert self.send(task, key, **kwargs), self.errors[-1:]
        return keys

    @contextlib.contextmanager
    def flow(self, task: str, prefix: str, interval: float, **kwargs: Any) -> Iterator[Flow]:
        """Send a task every `interval` seconds from a thread while the block runs (or
        until the Flow it yields is stopped)."""
        flow = Flow(self, task, prefix, interval, kwargs)
        try:
            yield flow
        finally:
            flow.stop()

    def control_stats(self, node: str, timeout: float = 3.0) -> dict[str, Any] | None:
        replies = self.app.control.inspect(destination=[node], timeout=timeout).stats() or {}
        stats = replies.get(node)
        return stats if isinstance(stats, dict) else None


class Flow:
    """A thread publishing one task every interval seconds until stop()."""

    def __init__(self, publisher: Publisher, task: str, prefix: str, interval: float,
                 kwargs: dict[str, Any]) -> None:
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.is_set():
                started = time.monotonic()
                publisher.send(task, publisher.next_key(prefix), **kwargs)
                self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

        self._thread = threading.Thread(target=run, name="publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the publisher thread did not stop"


def queue_depth(site: DemoSite, queue: str) -> int | None:
    """Ready messages in queue (passive declare), None if it does not exist."""
    from amqp.exceptions import NotFound
    from kombu.connection import Connection

    with Connection(site.broker_url) as connection:
        try:
            return int(connection.default_channel.queue_declare(queue=queue, passive=True)[1])
        except NotFound:  # 404: no such queue (any other failure is the test's)
            return None


# --- the broker -------------------------------------------------------------------------


@dataclass
class Outage:
    began: float = 0.0  # time.time() when stop_app returned
    ended: float = 0.0  # time.time() when start_app returned
    stop_took: float = 0.0
    start_took: float = 0.0

    @property
    def seconds(self) -> float:
        return self.ended - self.began


def _rabbitmqctl(*args: str, timeout: float = 120) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True,
                   timeout=timeout)


@contextlib.contextmanager
def broker_outage() -> Iterator[Outage]:
    """Stop the RabbitMQ application (not the node: other tests may share it) for as long
    as the block runs; start_app is always called, whatever happens."""
    outage = Outage()
    started = time.time()
    try:
        _rabbitmqctl("stop_app")
        outage.began = time.time()
        outage.stop_took = outage.began - started
        yield outage
    finally:
        restart = time.time()
        _rabbitmqctl("start_app")
        _rabbitmqctl("await_startup", timeout=120)
        outage.ended = time.time()
        outage.start_took = outage.ended - restart


@contextlib.contextmanager
def run_unit(site: DemoSite, service: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run one service exactly as its unit says (as systemd would at boot, without
    launch's broker check), in a session of its own; stopped warmly, then killed."""
    from crate_deploy.run.launch import INHERITED
    from crate_deploy.systemd.units import load_service

    base = {key: os.environ[key] for key in INHERITED if key in os.environ}
    unit = load_service(site.unit(service), base)
    with log.open("wb") as sink:
        process = subprocess.Popen(unit.argv, env=unit.environment, cwd=unit.working_directory,
                                   stdin=subprocess.DEVNULL, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)  # warm shutdown
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and os.waitid(
                os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            time.sleep(0.1)
        # Unreaped, the main process still holds its group id: kill what is left of it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


# --- processes ---------------------------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2:].split()[0] not in ("Z", "X")


# --- the record the documentation's table is made of ----------------------------------


def record(case: str, celery: str, *, sent: int, in_flight: int, completed: int, lost: int,
           recovery_s: float, notes: str = "") -> str:
    """Print (and log, with $CRATE_DEPLOY_RELIABILITY_LOG) one RELIABILITY line."""
    forced = os.environ.get("CRATE_DEPLOY_FAULT_DELIVERY")
    if forced and "delivery:" not in case:  # the run's profile, so the row says it
        case = f"{case}, delivery: {forced}"
    values = [case, celery, str(sent), str(in_flight), str(completed), str(lost),
              f"{recovery_s:.1f}", notes.replace("|", "/")]
    line = RECORD_PREFIX + "|".join(values)
    print(f"\n{line}", flush=True)
    log = os.environ.get("CRATE_DEPLOY_RELIABILITY_LOG")
    if log:
        with Path(log).open("a", encoding="utf-8") as file:
            file.write(line + "\n")
    return line


def table(lines: list[str]) -> str:
    """Markdown rows from RELIABILITY lines (the rest of the input is ignored)."""
    rows = [f"| {' | '.join(RECORD_FIELDS)} |", "|" + " --- |" * len(RECORD_FIELDS)]
    for line in lines:
        start = line.find(RECORD_PREFIX)
        if start >= 0:
            values = line[start + len(RECORD_PREFIX):].rstrip("\n").split("|")
            rows.append(f"| {' | '.join(values)} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - a helper for the documentation
    source = open(sys.argv[1], encoding="utf-8") if len(sys.argv) > 1 else sys.stdin  # noqa: SIM115
    with source:
        print(table(source.readlines()))
