"""A hand-written hardened worker unit under a real systemd (systemd-nspawn container).

Proves the container machinery end to end before rendered units rely on it:
the worker unit below starts under systemd 252 with all its hardening, serves
tasks sent from the host through RabbitMQ on 127.0.0.1 (a fresh vhost), and
stops cleanly; a probe unit with the same hardening reports what each
directive actually enforced inside the container; and the BPF-based cgroup
directives (IPAddressDeny=, DevicePolicy=) are shown to be enforced as well.

Needs root, systemd-nspawn and the root that `.ci/container-rootfs` builds,
and RabbitMQ on 127.0.0.1:5672 (guest/guest, `rabbitmqctl` on PATH). Missing
any of them, the tests skip on a developer machine and fail under CI (CI=true)
or with CRATE_DEPLOY_REQUIRE_CONTAINER=1.

    .ci/container-rootfs
    .venv/bin/pytest -m slow tests/integration/test_container_smoke.py -v
"""

from __future__ import annotations

import json
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.rabbit import amqp_url, broker_problem, temporary_vhost
from tests.systemd_container import (
    APP_DIR,
    VENV,
    Container,
    container_available,
    skip_or_fail,
)

pytestmark = pytest.mark.slow

SERVICE_USER_UID = 33  # Debian's www-data
# What PrivateDevices=yes leaves in /dev (no disks, no /dev/kmsg, no /dev/mem, ...).
PRIVATE_DEV = frozenset(
    [
        "char",
        "core",
        "fd",
        "full",
        "hugepages",
        "log",
        "mqueue",
        "null",
        "ptmx",
        "pts",
        "random",
        "shm",
        "stderr",
        "stdin",
        "stdout",
        "tty",
        "urandom",
        "zero",
    ]
)

# The hardening under test, exactly as the lead specified it.
HARDENING = """\
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=60
Restart=on-failure
NoNewPrivileges=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectSystem=strict
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
UMask=0077
PrivateUsers=yes
RemoveIPC=yes
"""


def worker_unit(queue: str) -> str:
    return f"""\
[Unit]
Description=smoke worker
After=network-online.target
[Service]
Type=simple
User=www-data
Group=www-data
WorkingDirectory={APP_DIR}
Environment=PYTHONPATH={APP_DIR}
ExecStart={VENV}/bin/celery -A cdsmoke worker -n smoke@%%h -Q {queue} -c 2 --loglevel=INFO
{HARDENING}[Install]
WantedBy=multi-user.target
"""


def probe_unit() -> str:
    hardening = HARDENING.replace("Restart=on-failure\n", "")  # a oneshot may not restart
    return f"""\
[Unit]
Description=hardening probe
[Service]
Type=oneshot
User=www-data
Group=www-data
WorkingDirectory={APP_DIR}
ExecStart={VENV}/bin/python {APP_DIR}/probe.py
{hardening}"""


APP_MODULE = '''\
"""Tiny Celery app for the container smoke test."""
import os
import socket
import sys

import celery
from celery import Celery

app = Celery("cdsmoke", broker={broker!r}, backend="rpc://")


@app.task
def add(x, y):
    return x + y


@app.task
def whoami():
    umask = os.umask(0)
    os.umask(umask)
    return {{
        "uid": os.getuid(),
        "gid": os.getgid(),
        "hostname": socket.gethostname(),
        "cwd": os.getcwd(),
        "umask": umask,
        "python": sys.executable,
        "celery": celery.__version__,
    }}
'''

# Runs as www-data under HARDENING and prints one JSON line: what each directive enforced.
# Calls that the system call filter answers with SIGSYS run in a forked child.
PROBE = r"""
import ctypes
import errno
import json
import os
import signal
import socket

libc = ctypes.CDLL(None, use_errno=True)
r = {}


def err(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()


def write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
    except OSError as exc:
        return err(exc)
    os.unlink(path)
    return "ok"


def listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return err(exc)


def in_child(fn):
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        except OSError as exc:
            os.write(2, err(exc).encode())
            os._exit(100 + exc.errno % 100)
        os._exit(0)
    _, st = os.waitpid(pid, 0)
    if os.WIFSIGNALED(st):
        return signal.Signals(os.WTERMSIG(st)).name
    code = os.WEXITSTATUS(st)
    return "ok" if code == 0 else errno.errorcode.get(code - 100, str(code))


def libc_call(name, *args):
    def call():
        if getattr(libc, name)(*args) == -1:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return call


r["uid"], r["gid"] = os.getuid(), os.getgid()
r["uid_map"] = [" ".join(line.split()) for line in open("/proc/self/uid_map")]
r["cap_eff"], r["cap_bnd"] = status("CapEff"), status("CapBnd")
r["no_new_privs"], r["seccomp"] = status("NoNewPrivs"), status("Seccomp")
umask = os.umask(0)
os.umask(umask)
r["umask"] = umask
r["ns"] = {n: os.readlink("/proc/self/ns/" + n) for n in ("user", "mnt", "uts", "net", "ipc")}
mounts = {}
for line in open("/proc/self/mountinfo"):
    left, _, right = line.partition(" - ")
    f, rf = left.split(), right.split()
    mounts[f[4]] = [rf[0], f[5], rf[2]]
r["mounts"] = mounts
r["write_app"] = write("/opt/crate-demo/app/probe-write")
r["write_etc"] = write("/etc/probe-write")
r["write_venv"] = write("/opt/crate-demo/venv/probe-write")
r["write_tmp"] = write("/tmp/probe-write")
r["write_var_tmp"] = write("/var/tmp/probe-write")
r["tmp"] = listdir("/tmp")
r["home"], r["root"] = listdir("/home"), listdir("/root")
r["proc_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
r["pid"] = os.getpid()
r["proc_sys"] = os.path.exists("/proc/sys")
r["proc_kmsg"] = os.path.exists("/proc/kmsg")
r["dev"] = listdir("/dev")
for fam in ("AF_NETLINK", "AF_PACKET"):
    try:
        socket.socket(getattr(socket, fam), socket.SOCK_RAW).close()
        r[fam] = "ok"
    except OSError as exc:
        r[fam] = err(exc)
r["unshare_user"] = in_child(libc_call("unshare", 0x10000000))  # CLONE_NEWUSER
r["personality_linux32"] = in_child(libc_call("personality", 0x0008))  # PER_LINUX32
r["nice"] = in_child(lambda: os.nice(1))  # setpriority: @resources
r["sched_fifo"] = in_child(lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1)))
r["setrlimit_nofile"] = in_child(lambda: __import__("resource").setrlimit(
    __import__("resource").RLIMIT_NOFILE, (64, 64)))


def setuid_bit():
    path = "/tmp/probe-suid"
    open(path, "w").close()
    os.chmod(path, 0o4755)


r["chmod_suid"] = in_child(setuid_bit)
r["chroot"] = in_child(lambda: os.chroot("/"))  # @privileged
r["sethostname"] = in_child(lambda: socket.sethostname("probe"))
print(json.dumps(r, sort_keys=True))
"""


CONNECT = """\
import socket
try:
    socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    print("connect: ok")
except OSError as exc:
    print("connect: failed", exc)
"""


@pytest.fixture(scope="module", autouse=True)
def _container_ready() -> None:
    """Skip (or fail under CI) before creating anything if no container can boot."""
    reason = container_available() or broker_problem()
    if reason:
        skip_or_fail(reason)


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    """A fresh RabbitMQ vhost for guest; deleted afterwards."""
    with temporary_vhost("cdsmoke") as name:
        yield name


@pytest.fixture(scope="module")
def broker_url(vhost: str) -> str:
    return amqp_url(vhost)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory, broker_url: str) -> Path:
    """The app directory bound read-only at /opt/crate-demo/app."""
    d = tmp_path_factory.mktemp("crate-demo-app")
    (d / "cdsmoke.py").write_text(APP_MODULE.format(broker=broker_url))
    (d / "probe.py").write_text(PROBE)
    (d / "connect.py").write_text(CONNECT)
    d.chmod(0o755)  # the bind mount's root: www-data must be able to enter it
    for f in d.iterdir():
        f.chmod(0o644)
    return d


@pytest.fixture(scope="module")
def container(app_dir: Path) -> Iterator[Container]:
    with Container(bind_ro=[(app_dir, APP_DIR)]) as ct:
        yield ct


def _wait_ready(ct: Container, unit: str, needle: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = ct.unit_properties(unit, "ActiveState")["ActiveState"]
        if state == "failed":
            break
        if needle in ct.journal(unit, output="cat"):
            return
        time.sleep(0.5)
    pytest.fail(f"{unit} not ready ({needle!r} not logged):\n{ct.journal(unit)}")


def test_worker_serves_tasks_and_stops_cleanly(
    container: Container, broker_url: str, tmp_path: Path
) -> None:
    ct = container
    queue = f"cdsmoke-{uuid.uuid4().hex[:12]}"
    unit = "cdsmoke-worker.service"
    units = tmp_path / "units"
    units.mkdir()
    (units / unit).write_text(worker_unit(queue))
    assert ct.install_units(units, enable=True) == [unit]
    wants = ct.run(["readlink", f"/etc/systemd/system/multi-user.target.wants/{unit}"])
    assert wants.stdout.strip() == f"/etc/systemd/system/{unit}"

    ct.systemctl("start", unit)
    hostname = ct.run(["hostname"]).stdout.strip()
    _wait_ready(ct, unit, f"smoke@{hostname} ready.")

    sender = Celery("cdsmoke-host", broker=broker_url, backend="rpc://")
    sender.conf.broker_connection_retry_on_startup = True
    try:
        sums = [sender.send_task("cdsmoke.add", args=(i, i), queue=queue) for i in range(8)]
        assert [r.get(timeout=60) for r in sums] == [2 * i for i in range(8)]
        who: dict[str, Any] = sender.send_task("cdsmoke.whoami", queue=queue).get(timeout=60)
    finally:
        sender.close()
    assert who["uid"] == SERVICE_USER_UID
    assert who["gid"] == SERVICE_USER_UID
    assert who["hostname"] == hostname
    assert who["cwd"] == APP_DIR
    assert who["umask"] == 0o077
    assert who["python"] == f"{VENV}/bin/python3"
    assert who["celery"] == "5.2.7"

    started = time.monotonic()
    ct.systemctl("stop", unit)
    stop_seconds = time.monotonic() - started
    props = ct.unit_properties(
        unit, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus", "NRestarts"
    )
    log = ct.journal(unit)
    assert props == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainCode": "1",  # CLD_EXITED
        "ExecMainStatus": "0",
        "NRestarts": "0",
    }, log
    assert stop_seconds < 30, log
    assert "Warm shutdown" in log, log
    for bad in ("Killing process", "timed out", "SIGKILL", "Traceback"):
        assert bad not in log, log


def test_hardening_in_effect(container: Container, tmp_path: Path) -> None:
    """What each directive enforced for a process of a unit inside the container."""
    ct = container
    unit = "cdsmoke-probe.service"
    units = tmp_path / "units"
    units.mkdir()
    (units / unit).write_text(probe_unit())
    ct.install_units(units)
    ct.write_file("/tmp/host-marker", "PrivateTmp must hide this\n")
    ct.systemctl("start", unit)
    lines = [ln for ln in ct.journal(unit, output="cat").splitlines() if ln.startswith("{")]
    assert lines, ct.journal(unit)
    r = json.loads(lines[-1])
    report = json.dumps(r, indent=1, sort_keys=True)
    init_ns = {
        n: ct.run(["readlink", f"/proc/1/ns/{n}"]).stdout.strip()
        for n in ("user", "mnt", "uts", "net", "ipc")
    }
    mounts = r["mounts"]

    def mount_opts(path: str) -> set[str]:
        fstype, opts, super_opts = mounts[path]
        return {fstype, *opts.split(","), *super_opts.split(",")}

    expected: dict[str, bool] = {
        # User=, PrivateUsers=yes: a user namespace mapping root and www-data only
        "User=www-data": r["uid"] == SERVICE_USER_UID and r["gid"] == SERVICE_USER_UID,
        "PrivateUsers=yes": r["ns"]["user"] != init_ns["user"]
        and sorted(r["uid_map"]) == ["0 0 1", "33 33 1"],
        "CapabilityBoundingSet=": int(r["cap_bnd"], 16) == 0 and int(r["cap_eff"], 16) == 0,
        "NoNewPrivileges=yes": r["no_new_privs"] == "1",
        "SystemCallFilter=": r["seccomp"] == "2",
        "UMask=0077": r["umask"] == 0o077,
        "ProtectSystem=strict": {r["write_etc"], r["write_venv"], r["write_app"]} == {"EROFS"}
        and "ro" in mount_opts("/"),
        "PrivateTmp=yes": r["write_tmp"] == "ok"
        and r["write_var_tmp"] == "ok"
        and "host-marker" not in r["tmp"],
        # /home, /root and /run/user become empty, inaccessible (mode 000) directories
        "ProtectHome=yes": r["home"] in ([], "EACCES")
        and r["root"] in ([], "EACCES")
        and "ro" in mount_opts("/home"),
        "ProtectProc=invisible": {"hidepid=invisible", "subset=pid"} <= mount_opts("/proc")
        and 1 not in r["proc_pids"]
        and r["pid"] in r["proc_pids"],
        "ProcSubset=pid": not r["proc_sys"] and not r["proc_kmsg"],
        "PrivateDevices=yes": "kmsg" not in r["dev"] and set(r["dev"]) <= PRIVATE_DEV,
        "ProtectKernelTunables=yes": "ro" in mount_opts("/sys"),
        "ProtectControlGroups=yes": "ro" in mount_opts("/sys/fs/cgroup"),
        "ProtectHostname=yes": r["ns"]["uts"] != init_ns["uts"] and r["sethostname"] != "ok",
        "mount namespace": r["ns"]["mnt"] != init_ns["mnt"],
        "RestrictAddressFamilies=": r["AF_NETLINK"] == "EAFNOSUPPORT"
        and r["AF_PACKET"] == "EAFNOSUPPORT",
        "RestrictNamespaces=yes": r["unshare_user"] == "EPERM",
        "LockPersonality=yes": r["personality_linux32"] == "EPERM",
        "RestrictSUIDSGID=yes": r["chmod_suid"] == "EPERM",
        "RestrictRealtime=yes": r["sched_fifo"] in ("EPERM", "SIGSYS"),
        "SystemCallFilter=~@resources": r["nice"] == "SIGSYS",
        "SystemCallFilter=~@privileged": r["chroot"] == "SIGSYS",
    }
    failed = sorted(k for k, ok in expected.items() if not ok)
    assert not failed, f"not enforced: {failed}\nprobe report:\n{report}\ninit ns: {init_ns}"
    assert ct.unit_properties(unit, "Result")["Result"] == "success"
    # Reported, not asserted: setrlimit() goes through prlimit64, which @resources lacks.
    print(f"probe: setrlimit(RLIMIT_NOFILE) -> {r['setrlimit_nofile']}")
    print(textwrap.indent(report, "  "))


def test_bpf_cgroup_directives_enforced(container: Container, tmp_path: Path) -> None:
    """IP firewalling and device control, which systemd implements with BPF on cgroups.

    Enforced only because Container lets the bpf() system call through
    (bpf=True) and gives the container cgroup v2 (unified_cgroup=True).
    """
    ct = container
    connect = f"ExecStart={VENV}/bin/python {APP_DIR}/connect.py\n"
    head = "[Service]\nType=oneshot\nUser=www-data\n"
    read_zero = "ExecStart=/bin/sh -c 'head -c1 /dev/zero >/dev/null && echo zero: ok'\n"
    units = {
        "cds-ip-deny.service": head + "IPAddressDeny=any\n" + connect,
        "cds-ip-allow.service": head + "IPAddressDeny=any\nIPAddressAllow=localhost\n" + connect,
        "cds-dev-closed.service": head
        + "DevicePolicy=strict\nDeviceAllow=/dev/null rw\n"
        + read_zero,
        "cds-dev-open.service": head + read_zero,
    }
    d = tmp_path / "units"
    d.mkdir()
    for name, text in units.items():
        (d / name).write_text(text)
    ct.install_units(d)
    out: dict[str, str] = {}
    for name in units:
        ct.systemctl("start", name, check=False)
        out[name] = ct.journal(name, output="cat")
    assert "connect: failed" in out["cds-ip-deny.service"], out
    assert "connect: ok" in out["cds-ip-allow.service"], out
    assert "zero: ok" not in out["cds-dev-closed.service"], out
    assert "zero: ok" in out["cds-dev-open.service"], out
