"""A throwaway three-node RabbitMQ cluster on loopback, for the cluster fault tests.

The machine's own RabbitMQ (rabbit@localhost on 127.0.0.1:5672) is never touched: the
nodes here have their own names (crate-test-a-TOKEN@localhost ...), their own ports
(AMQP, Erlang distribution and the CLI's distribution range, from one block of free
ports), their own data, log and config files under one temporary directory, and their
own Erlang cookie, in a HOME of their own (so neither /var/lib/rabbitmq/.erlang.cookie
nor the shared node's rabbitmq-env.conf is read or written). They register with the
machine's epmd (port 4369), as every Erlang node on it does; epmd is shared, not changed.

Every node runs `rabbitmq-server` (the package's script, run directly as the current
user, not through /usr/sbin's wrapper that switches to the rabbitmq user) with the
RABBITMQ_* variables of `Node.environment()`; the CLI tools (`rabbitmqctl`,
`rabbitmq-queues`, `rabbitmq-diagnostics`) run with the same variables. B and C join
A with `stop_app; join_cluster; start_app`. Teardown stops every node and kills what is
left of ours: a beam.smp whose command line names one of our nodes, nothing else.

Reproduce by hand (docs/cluster.md):

    .venv/bin/python -m tests.integration.rabbit_cluster up /tmp/cluster   # prints URLs
    .venv/bin/python -m tests.integration.rabbit_cluster down /tmp/cluster
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

SBIN = Path("/usr/lib/rabbitmq/bin")  # the package's scripts, not /usr/sbin's su wrappers
HOST = "localhost"
NAMES = ("a", "b", "c")
STATE_FILE = "cluster.json"
MARK = "-crate_deploy_test_node"  # VM argument naming our node (ignored by Erlang)


def _port_block(size: int) -> int:
    """The first of `size` consecutive loopback ports nobody listens on (below 30000, so
    the CLI range above the distribution ports stays within 65535)."""
    for _ in range(200):
        base = random.randrange(21000, 29000 - size)
        if all(_free(port) for port in range(base, base + size)):
            return base
    raise RuntimeError("no block of free loopback ports")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Node:
    """One node of the cluster: its name, ports and directory."""

    letter: str
    name: str  # crate-test-a-TOKEN@localhost
    amqp_port: int
    dist_port: int
    ctl_ports: tuple[int, int]  # the CLI's own distribution port range
    base: Path
    home: Path  # holds .erlang.cookie, shared by every node and CLI of the cluster

    def environment(self) -> dict[str, str]:
        """What rabbitmq-server and the CLI tools need to be this node and nothing else."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": str(self.home),
            # Our own (empty) rabbitmq-env.conf: /etc/rabbitmq's names the shared node.
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_ports[0]),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_ports[1]),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_LOGS": str(self.base / "log" / "node.log"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Distribution on loopback only, as the shared node's own env file asks; and the
            # node's name on the VM's command line (RabbitMQ 3.10 keeps it in the
            # environment), where teardown looks for it before it signals anything.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                f"-kernel inet_dist_use_interface {{127,0,0,1}} {MARK} {self.name}",
        }

    def url(self, vhost: str, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.amqp_port}/{vhost}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.amqp_port}"


@dataclass
class RabbitCluster:
    """Three RabbitMQ nodes joined in one cluster, all under `root`."""

    root: Path
    nodes: list[Node] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _boot_marks: dict[str, int] = field(default_factory=dict)  # log size at each start

    # --- making it -----------------------------------------------------------------

    @classmethod
    def create(cls, root: Path) -> RabbitCluster:
        """Lay out three nodes' directories and cookie (nothing started yet)."""
        token = secrets.token_hex(3)
        base = _port_block(60)
        home = root / "home"
        home.mkdir(parents=True, mode=0o700)
        # Erlang refuses a cookie others can read: created 0400, whatever the umask.
        descriptor = os.open(home / ".erlang.cookie", os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o400)
        with os.fdopen(descriptor, "w", encoding="ascii") as cookie:
            cookie.write(secrets.token_hex(16).upper())
        nodes = []
        for index, letter in enumerate(NAMES):
            node_dir = root / letter
            (node_dir / "log").mkdir(parents=True)
            (node_dir / "rabbitmq-env.conf").write_text("", encoding="utf-8")
            # guest may log in, from loopback only (RabbitMQ's default, said out loud).
            (node_dir / "rabbitmq.conf").write_text("loopback_users.guest = true\n",
                                                    encoding="utf-8")
            (node_dir / "enabled_plugins").write_text("[].\n", encoding="utf-8")
            nodes.append(Node(
                letter, f"crate-test-{letter}-{token}@{HOST}", base + index, base + 10 + index,
                (base + 20 + 10 * index, base + 29 + 10 * index), node_dir, home))
        cluster = cls(root, nodes)
        cluster.save()
        return cluster

    def save(self) -> None:
        document = [{"letter": n.letter, "name": n.name, "amqp_port": n.amqp_port,
                     "dist_port": n.dist_port, "ctl_ports": list(n.ctl_ports)}
                    for n in self.nodes]
        (self.root / STATE_FILE).write_text(json.dumps(document, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, root: Path) -> RabbitCluster:
        document = json.loads((root / STATE_FILE).read_text(encoding="utf-8"))
        return cls(root, [Node(d["letter"], d["name"], d["amqp_port"], d["dist_port"],
                               tuple(d["ctl_ports"]), root / d["letter"], root / "home")
                          for d in document])

    def start(self, timeout: float = 180) -> None:
        """Start the three nodes, wait for them, and join B and C to A (in parallel: the
        CLI costs seconds of CPU per call on a busy machine)."""
        for node in self.nodes:
            self.start_node(node)
        for node in self.nodes:
            self.wait_booted(node, timeout)
        first = self.nodes[0]

        def join(node: Node) -> None:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app", timeout=timeout)

        with ThreadPoolExecutor(len(self.nodes) - 1) as pool:
            for future in [pool.submit(join, node) for node in self.nodes[1:]]:
                future.result()
        running = self.running_nodes(first)
        if sorted(running) != sorted(n.name for n in self.nodes):
            raise RuntimeError(f"cluster did not form: running {running}")

    def start_node(self, node: Node) -> None:
        """Start (or start again, after a kill) one node's Erlang VM in the background;
        wait_booted() waits for it."""
        self._boot_marks[node.letter] = _log_size(node)
        log = (node.base / "log" / "startup.log").open("ab")
        with log:
            self.processes[node.letter] = subprocess.Popen(
                [str(SBIN / "rabbitmq-server")], env=node.environment(), cwd=node.base,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def wait_booted(self, node: Node, timeout: float = 180) -> None:
        """Wait until the VM started by start_node() logs that RabbitMQ is up (reading its
        log, not asking the CLI, which costs seconds per call)."""
        mark = self._boot_marks.get(node.letter, 0)
        deadline = time.monotonic() + timeout
        while BOOTED not in _log_text(node, mark):
            process = self.processes.get(node.letter)
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{node.name} exited with {process.returncode} while "
                                   f"booting; see {node.base / 'log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} not up within {timeout:g}s")
            time.sleep(0.2)

    # --- using it ------------------------------------------------------------------

    def node(self, letter_or_name: str) -> Node:
        return next(n for n in self.nodes if letter_or_name in (n.letter, n.name))

    def urls(self, vhost: str) -> list[str]:
        return [node.url(vhost) for node in self.nodes]

    def ctl(self, node: Node, *args: str, tool: str = "rabbitmqctl", timeout: float = 120,
            check: bool = True) -> str:
        """Run a CLI tool against node; its output (raises on failure when check)."""
        result = subprocess.run([str(SBIN / tool), "-q", "-n", node.name, *args],
                                env=node.environment(), capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} -n {node.name} {' '.join(args)}: exit "
                               f"{result.returncode}: {result.stderr.strip() or result.stdout}")
        return result.stdout

    def running_nodes(self, via: Node) -> list[str]:
        status = json.loads(self.ctl(via, "cluster_status", "--formatter", "json"))
        return list(status.get("running_nodes", []))

    def add_vhost(self, vhost: str) -> None:
        via, _ = self.ctl_any("add_vhost", vhost)
        self.ctl(via, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def ctl_any(self, *args: str) -> tuple[Node, str]:
        """Run a cluster-wide CLI command through the first node that takes it (a node
        that is down refuses it: the next is tried; asking first would cost a CLI call
        of its own, a second or more of CPU): the node it ran on, and its output."""
        failures = []
        for node in self.nodes:
            try:
                return node, self.ctl(node, *args)
            except RuntimeError as failure:
                failures.append(str(failure))
        raise RuntimeError(f"no node of the cluster took it: {failures}")

    def queue_holder(self, vhost: str, queue: str) -> Node:
        """The node that holds a queue now: a quorum queue's leader, a classic queue's
        home (list_queues shows only a pid for the latter, so ask the node itself)."""
        expression = (
            f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"{vhost}">>, queue, '
            f'<<"{queue}">>)), case amqqueue:get_pid(Q) of {{_, N}} -> N; P -> node(P) end.')
        _, answer = self.ctl_any("eval", expression)
        return self.node(answer.strip().strip("'"))

    # --- damaging it ---------------------------------------------------------------

    def stop_app(self, node: Node) -> None:
        self.ctl(node, "stop_app")

    def start_app(self, node: Node, timeout: float = 180) -> None:
        """Start the application again (returns once it runs)."""
        self.ctl(node, "start_app", timeout=timeout)

    def kill(self, node: Node) -> int:
        """SIGKILL node's Erlang VM (verified by its node name); returns the pid killed."""
        pids = _pids_named(node.name)
        if len(pids) != 1:
            raise RuntimeError(f"expected one Erlang VM running {node.name}, found {pids}")
        pid = pids[0]
        os.kill(pid, signal.SIGKILL)
        process = self.processes.get(node.letter)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
        return pid

    def stop_node(self, node: Node, timeout: float = 60) -> None:
        """Stop node's VM: SIGTERM (Erlang stops gracefully), SIGKILL what is left after
        timeout. Only a beam.smp whose command line names this node is signalled."""
        for pid in _pids_named(node.name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pids_named(node.name) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _pids_named(node.name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process = self.processes.pop(node.letter, None)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)

    def quorum_critical(self, node: Node) -> bool:
        """Would stopping node leave some quorum queue without a majority?"""
        result = subprocess.run(
            [str(SBIN / "rabbitmq-queues"), "-q", "-n", node.name,
             "check_if_node_is_quorum_critical"],
            env=node.environment(), capture_output=True, text=True, timeout=60, check=False)
        return result.returncode != 0

    # --- ending it -----------------------------------------------------------------

    def teardown(self) -> None:
        """Stop every node (in parallel), kill what is left of ours, remove the directory."""
        with ThreadPoolExecutor(len(self.nodes) or 1) as pool:
            list(pool.map(lambda node: self.stop_node(node, timeout=30), self.nodes))
        shutil.rmtree(self.root, ignore_errors=True)


BOOTED = "Server startup complete"


def _log_size(node: Node) -> int:
    try:
        return (node.base / "log" / "node.log").stat().st_size
    except FileNotFoundError:
        return 0


def _log_text(node: Node, offset: int) -> str:
    try:
        with (node.base / "log" / "node.log").open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _pids_named(node_name: str) -> list[int]:
    """Erlang VMs (beam.smp) whose command line carries `MARK node_name` (an argument
    the VM ignores, put there by Node.environment())."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"beam.smp"):
            continue
        words = [word.decode(errors="replace") for word in argv]
        if any(word == MARK and after == node_name for word, after in itertools.pairwise(words)):
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def rabbit_cluster(root: Path) -> Iterator[RabbitCluster]:
    """A started three-node cluster under root, torn down afterwards whatever happens."""
    cluster = RabbitCluster.create(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.teardown()


def cluster_problem() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if not (SBIN / "rabbitmq-server").exists() or shutil.which("erl") is None:
        return f"no RabbitMQ server scripts in {SBIN}"
    return None


def main(argv: list[str]) -> int:  # pragma: no cover - a tool for people
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print("usage: python -m tests.integration.rabbit_cluster up|down DIRECTORY",
              file=sys.stderr)
        return 2
    root = Path(argv[1]).resolve()
    if argv[0] == "up":
        cluster = RabbitCluster.create(root)
        started = time.monotonic()
        try:
            cluster.start()
        except BaseException:
            cluster.teardown()
            raise
        print(f"cluster up in {time.monotonic() - started:.1f}s under {root}")
        for node in cluster.nodes:
            print(f"  {node.name}  amqp://guest:guest@{node.address}/  "
                  f"(rabbitmqctl env: see {root / node.letter})")
        return 0
    RabbitCluster.load(root).teardown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
