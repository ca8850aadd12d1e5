"""Fixtures for the end-to-end tests: real RabbitMQ vhosts, real application venvs, real
`crate-deploy launch` processes running the demo site (examples/demo).

Everything here talks to RabbitMQ on 127.0.0.1:5672 (guest/guest) and manages vhosts
with `rabbitmqctl`; each test gets a vhost of its own, deleted afterwards, so nothing
an earlier run left behind can take or poison its messages. The fleets run in the
cached application venvs that `.ci/app-venvs` builds (Celery 5.2.7 and 5.7.0).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.rabbit import BROKER, broker_problem, temporary_vhost

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
CRATE_DEPLOY = Path(sys.executable).parent / "crate-deploy"
VENV_CACHE = Path(os.environ.get("CRATE_DEPLOY_CACHE", "/var/cache/crate-deploy")) / "venvs"
APP_VENVS = {"celery52": VENV_CACHE / "celery-5.2", "celery57": VENV_CACHE / "celery-latest"}
QUEUES = {"quick": "demo-quick", "slow": "demo-slow"}  # pool -> the one queue it consumes
LAUNCH_STATE = ".crate-deploy-launch.json"

pytestmark = pytest.mark.slow  # (for modules that import it; the hook below marks the rest)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration starts real processes: mark it slow."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.slow)


# --- RabbitMQ --------------------------------------------------------------------


@contextlib.contextmanager
def fresh_vhost() -> Iterator[str]:
    """A new RabbitMQ vhost for one test, skipped where there is no broker."""
    if problem := broker_problem():
        pytest.skip(problem)
    with temporary_vhost("cd-test") as name:
        yield name


@pytest.fixture
def vhost() -> Iterator[str]:
    with fresh_vhost() as name:
        yield name


# --- application venvs -------------------------------------------------------------


def _venv_problem(venv: Path) -> str | None:
    if not (venv / "bin" / "celery").is_file():
        return f"{venv} is missing (build it with .ci/app-venvs)"
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import celery, flower"],
                           capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode != 0:
        return f"{venv} is broken (rebuild it with .ci/app-venvs): {probe.stderr.strip()}"
    return None


def venv_or_skip(key: str) -> Path:
    venv = APP_VENVS[key]
    if problem := _venv_problem(venv):
        pytest.skip(problem)
    return venv


@pytest.fixture(scope="module", params=sorted(APP_VENVS), ids=sorted(APP_VENVS))
def app_venv(request: pytest.FixtureRequest) -> Path:
    """Each cached application venv in turn (module scope: a module's tests share it)."""
    return venv_or_skip(request.param)


@pytest.fixture(scope="module")
def latest_venv() -> Path:
    """The newest Celery's venv, for tests that need just one."""
    return venv_or_skip("celery57")


# --- the demo site, copied, adjusted and rendered ----------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DemoSite:
    """The demo site rendered for one test: where things are and what the secrets are."""

    site_dir: Path
    site_file: Path
    out: Path
    vhost: str
    venv: Path
    broker_url: str  # with the password, for the test's own client
    flower_port: int
    flower_user: str
    flower_password: str
    broker_password: str
    site: dict[str, Any]

    @property
    def state_file(self) -> Path:
        return self.out / LAUNCH_STATE

    def unit(self, service: str) -> Path:
        return self.out / "systemd" / f"{service}.service"

    def rerender(self, change: Callable[[dict[str, Any]], None] | None = None) -> str:
        """Change the site file (a function of its YAML data) and render it again."""
        if change is not None:
            change(self.site)
            self.site_file.write_text(yaml.safe_dump(self.site, sort_keys=False),
                                      encoding="utf-8")
        return render(self.site_file, self.out)


def render(site_file: Path, out: Path) -> str:
    result = run_crate_deploy("render", str(site_file), "-o", str(out), timeout=120)
    assert result.returncode == 0, f"render failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def run_crate_deploy(*args: str, timeout: float = 60,
                     env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the dev venv's crate-deploy program (as an operator would)."""
    return subprocess.run([str(CRATE_DEPLOY), *args], capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env=dict(env) if env is not None else None)


def send_from_demoapp(site: DemoSite) -> None:
    """demoapp's own code sends demoapp.quick, configured as demoapp configures itself
    (not by the site: it lands on demoapp's own `not-the-rendered-queue`)."""
    sent = subprocess.run(
        [str(site.venv / "bin" / "python"), "-c",
         "import demoapp; demoapp.quick.delay(); print('sent')"],
        cwd=site.site_dir, env={**os.environ, "CELERY_BROKER_URL": site.broker_url},
        capture_output=True, text=True, timeout=120, check=False)
    assert sent.returncode == 0, sent.stderr


def _merge(data: dict[str, Any], changes: Mapping[str, Any]) -> None:
    """Deep-merge changes into site data; `workers` is a mapping pool name -> changes."""
    for key, value in changes.items():
        if key == "workers" and isinstance(value, Mapping):
            by_name = {worker["name"]: worker for worker in data["workers"]}
            for name, worker_changes in value.items():
                by_name[name].update(worker_changes)
        elif isinstance(value, Mapping) and isinstance(data.get(key), dict):
            _merge(data[key], value)
        else:
            data[key] = value


def make_demo_site(tmp: Path, vhost: str, venv: Path,
                   overrides: Mapping[str, Any] | None = None,
                   broker_host: str = BROKER,
                   broker_password: str = "guest", broker_user: str = "guest") -> DemoSite:
    """Copy examples/demo into tmp, point it at this test's vhost, venv, ports and state,
    and render it into tmp/out."""
    site_dir = tmp / "demo"
    shutil.copytree(DEMO, site_dir, ignore=shutil.ignore_patterns(
        "__pycache__", "state", "secrets.env", "site.yaml"))
    data = yaml.safe_load((DEMO / "site.yaml").read_text(encoding="utf-8"))
    flower_password = f"flower-{uuid.uuid4().hex[:16]}-pw"
    secrets = tmp / "secrets.env"
    secrets.touch(mode=0o600)
    secrets.chmod(0o600)
    secrets.write_text(f"BROKER_PASSWORD={broker_password}\n"
                       f"FLOWER_PASSWORD={flower_password}\n", encoding="utf-8")
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    port = free_port()
    _merge(data, {
        "venv": str(venv),
        "working_directory": str(site_dir),
        "secrets_file": str(secrets),
        "paths": {"state_dir": str(tmp / "state")},
        "broker": {"urls": [f"amqp://{broker_user}:${{BROKER_PASSWORD}}@{broker_host}/{vhost}"]},
        "flower": {"port": port},
    })
    _merge(data, overrides or {})
    site_file = site_dir / "site.yaml"
    site_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    out = tmp / "out"
    render(site_file, out)
    user = data["flower"]["auth"][0]["user"]
    return DemoSite(site_dir, site_file, out, vhost, venv,
                    f"amqp://{broker_user}:{broker_password}@{broker_host}/{vhost}", port, user,
                    flower_password, broker_password, data)


@pytest.fixture
def demo_site(tmp_path: Path, vhost: str, app_venv: Path) -> Callable[..., DemoSite]:
    """Render the demo site for this test (call it, with optional site overrides)."""

    def make(overrides: Mapping[str, Any] | None = None) -> DemoSite:
        return make_demo_site(tmp_path, vhost, app_venv, overrides)

    return make


# --- processes ---------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), None if it is gone or dead."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # exited; waiting for a parent that may never reap it
        return None
    return fields[19]


def descendants(pid: int) -> list[int]:
    """Every live process below pid."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.2, *,
             what: str = "condition", describe: Callable[[], str] = lambda: "") -> Any:
    """Poll until condition() is truthy; return its value or fail after timeout, with
    describe()'s account of the state (a journal, say)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{describe()}")
        time.sleep(interval)


class Launch:
    """`crate-deploy launch DIR` in the background: a context manager that waits for
    "ready in", and at exit stops the fleet with SIGINT (SIGKILL after a timeout) and
    checks that every process it ever saw is gone."""

    def __init__(self, site: DemoSite, *, timeout: float = 60.0, ready_within: float = 90.0,
                 stop_within: float = 60.0, log: Path | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.site, self.timeout, self.args = site, timeout, args
        self.ready_within, self.stop_within = ready_within, stop_within
        self.log_path = log or site.out.parent / f"launch-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.seen: dict[int, str] = {}  # pid -> start time, of every fleet process seen
        self.ready_seconds: float | None = None

    # --- running -----------------------------------------------------------------

    def argv(self) -> list[str]:
        return [str(CRATE_DEPLOY), "launch", str(self.site.out), "--timeout", f"{self.timeout:g}",
                *self.args]

    def start(self) -> Launch:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.started_at = time.monotonic()
        return self

    def wait_ready(self) -> Launch:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_within
        while "ready in" not in self.log():
            if self.proc.poll() is not None:
                pytest.fail(f"launch exited with {self.proc.returncode} before it was ready:\n"
                            f"{self.tail()}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"launch not ready within {self.ready_within:g}s:\n{self.tail()}")
            time.sleep(0.1)
        self.ready_seconds = time.monotonic() - self.started_at
        self.remember()
        return self

    def __enter__(self) -> Launch:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.kill()
            raise

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if exc_type is None:
                self.stop()
            else:  # the test failed already: do not wait long for its tasks
                self.interrupt()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(10)
        self.kill()  # whatever is left, whatever happened (no-op after a clean stop)

    # --- looking at it -----------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def pids(self) -> dict[str, int]:
        """Main pid of each service, from the launch's state file (and remember them)."""
        document = _read_json(self.site.state_file)
        pids = {name: int(pid) for name, pid in document["services"].items()}
        self.remember(pids)
        return pids

    @property
    def launcher_pid(self) -> int:
        return int(_read_json(self.site.state_file)["launcher"])

    def remember(self, pids: Mapping[str, int] | None = None) -> None:
        """Note every fleet process now running, so stop() can check they all go."""
        if pids is None:
            try:
                pids = {name: int(pid) for name, pid in
                        _read_json(self.site.state_file)["services"].items()}
            except (OSError, ValueError, KeyError):
                pids = {}
        for pid in [*pids.values(), *(d for p in pids.values() for d in descendants(p))]:
            started = _start_time(pid)
            if started is not None:
                self.seen[pid] = started

    def alive(self) -> list[int]:
        """Fleet processes seen so far that are still running (same pid, same start)."""
        return [pid for pid, started in self.seen.items() if _start_time(pid) == started]

    # --- stopping ----------------------------------------------------------------

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the launch process (only)."""
        assert self.proc is not None
        self.remember()
        self.proc.send_signal(signal.SIGINT)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"launch still running {timeout:g}s after SIGINT:\n{self.tail()}")
        return self.returncode

    def stop(self, expect: int | None = 0) -> int:
        """SIGINT, wait, and check the exit status and that nothing is left running."""
        self.interrupt()
        code = self.wait(self.stop_within)
        self.assert_all_gone()
        if expect is not None:
            assert code == expect, f"launch exited with {code}:\n{self.tail()}"
        return code

    def assert_all_gone(self, within: float = 10.0) -> None:
        assert self.seen, "no fleet process was ever seen"
        deadline = time.monotonic() + within
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            described = {pid: " ".join(_safe_cmdline(pid)) for pid in left}
            self.kill()
            pytest.fail(f"processes left running after launch exited: {described}")

    def kill(self) -> None:
        """Last resort: SIGKILL the launch's group and every fleet process group seen."""
        self.remember()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for pid in self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # a service leads its own session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _safe_cmdline(pid: int) -> list[str]:
    try:
        return cmdline(pid)
    except OSError:
        return ["?"]


def _read_json(path: Path) -> dict[str, Any]:
    import json

    document = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


# --- the test's own Celery client -----------------------------------------------------


@dataclass
class TaskClient:
    """A Celery app in the test process, on the site's broker, with rpc:// results."""

    app: Any
    sent: list[Any] = field(default_factory=list)

    def send(self, name: str, queue: str, **kwargs: Any) -> Any:
        result = self.app.send_task(name, kwargs=kwargs, queue=queue)
        self.sent.append(result)
        return result

    def send_many(self, name: str, queue: str, kwargs_list: list[dict[str, Any]]) -> list[Any]:
        """Send many tasks over one producer connection."""
        with self.app.producer_or_acquire() as producer:
            results = [self.app.send_task(name, kwargs=kwargs, queue=queue, producer=producer)
                       for kwargs in kwargs_list]
        self.sent.extend(results)
        return results

    def gather(self, results: list[Any], timeout: float) -> list[Any]:
        """Every result's value, in order (raises if one fails or times out)."""
        from celery.result import ResultSet

        return list(ResultSet(results, app=self.app).join_native(timeout=timeout,
                                                                 propagate=True))

    def inspect(self, node: str | None = None, timeout: float = 2.0) -> Any:
        return self.app.control.inspect(destination=[node] if node else None, timeout=timeout)

    def active(self, queue: str | None = None) -> list[dict[str, Any]]:
        """Tasks running now on any worker (optionally only those from one queue)."""
        replies = self.inspect(timeout=1.0).active() or {}
        return [task for tasks in replies.values() for task in tasks
                if queue is None or task.get("delivery_info", {}).get("routing_key") == queue]


def make_client(broker_url: str) -> Any:
    from celery import Celery
    from kombu import Exchange, Queue

    app = Celery("crate-deploy-tests", broker=broker_url, backend="rpc://",
                 set_as_current=False)
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name, durable=True)
                     for name in QUEUES.values()],
        task_create_missing_queues=False, broker_connection_retry_on_startup=True,
        result_expires=600,
    )
    return app


@contextlib.contextmanager
def task_client(site: DemoSite) -> Iterator[TaskClient]:
    app = make_client(site.broker_url)
    try:
        yield TaskClient(app)
    finally:
        app.close()


def hostname() -> str:
    return socket.gethostname()


def node(pool: str) -> str:
    return f"{pool}@{hostname()}"


# --- a loopback TCP proxy to the broker, to cut the connection at will ----------------


class BrokerProxy:
    """Forwards 127.0.0.1:port to RabbitMQ; cut() drops every connection and refuses new
    ones (the port stops listening) until restore()."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.upstream, self.port = upstream, free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def __enter__(self) -> BrokerProxy:
        self.restore()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cut()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        for sock in [*([listener] if listener else []), *sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
