"""Boot the cached Debian root under a real systemd, in a container, for tests.

Not a test module: integration tests import it to check rendered units under a
real systemd. systemd is never booted on the host (it would take the host
over); it runs as PID 1 of a ``systemd-nspawn --boot`` container instead::

    from tests.systemd_container import Container, container_available, skip_or_fail

    reason = container_available()
    if reason:
        skip_or_fail(reason)  # pytest.skip, or pytest.fail under CI=true
    with Container(bind_ro=[(app_dir, "/opt/crate-demo/app")]) as ct:
        ct.install_units(unit_dir)
        ct.systemctl("start", "crate.target")
        print(ct.journal("crate-worker@default.service"))

The root is the one ``.ci/container-rootfs`` builds and caches. Each container
boots it with ``--volatile=overlay``: the cached tree is the read-only lower
layer of an overlayfs whose upper layer is a tmpfs inside systemd-nspawn's own
mount namespace, so nothing a test does reaches the cache, nothing is copied
(a boot takes well under a second) and the kernel drops the writes with the
namespace, however the container ends.

The container shares the host's network namespace (no ``--private-network``),
so services inside reach the host's loopback (RabbitMQ on 127.0.0.1:5672) and
the host reaches theirs. By default it gets a pure cgroup v2 hierarchy (as a
Debian 12 server has, even where this host is hybrid) and may use bpf(), so its
systemd enforces IPAddressDeny=/IPAddressAllow= and DevicePolicy=/DeviceAllow=.
Resource limits (MemoryMax=, CPUQuota=, TasksMax=) are enforced only where the
host delegates those controllers; on a hybrid host they are silently ignored.

Nothing outlives the context manager: on exit the container is powered off
and waited for; whatever is left is killed through its PID namespace (SIGKILL
to its init), the systemd-nspawn process group and a cgroup of its own. If the
test process dies abruptly, systemd-nspawn gets SIGTERM (parent-death signal)
and, started with --kill-signal=SIGKILL, kills the container's init at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final, NoReturn

__all__ = [
    "BUILD_SCRIPT",
    "Container",
    "ContainerCommandError",
    "ContainerError",
    "ContainerWarning",
    "container_available",
    "default_rootfs",
    "skip_or_fail",
]

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
BUILD_SCRIPT: Final = REPO_ROOT / ".ci" / "container-rootfs"
SUITE: Final = "bookworm"
MARKER_NAME: Final = ".crate-deploy-recipe"
APP_PREFIX: Final = "/opt/crate-demo"
# Where tests bind the application, and the venv .ci/container-rootfs made in the root.
APP_DIR: Final = f"{APP_PREFIX}/app"
VENV: Final = f"{APP_PREFIX}/venv"

UNIT_SUFFIXES: Final = frozenset(
    {".service", ".socket", ".target", ".timer", ".path", ".slice", ".mount", ".automount"}
)
# Environment of every command run inside the container (nothing of the host's leaks in).
CONTAINER_ENV: Final[Mapping[str, str]] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_LOG_COLOR": "0",
}
_TOOLS: Final = ("systemd-nspawn", "nsenter")
_PR_SET_PDEATHSIG: Final = 1
_CGROUP_PREFIX: Final = "crate-ct-"
_ANSI_ESCAPE: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ContainerError(RuntimeError):
    """The container could not be booted, reached, or shut down."""


class ContainerWarning(UserWarning):
    """The container booted "degraded": some of its own units failed."""


class ContainerCommandError(subprocess.CalledProcessError):
    """A command run in the container exited non-zero; the message carries its output."""

    def __str__(self) -> str:
        parts = [super().__str__()]
        for label, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text:
                parts.append(f"--- {label} ---\n{str(text).rstrip()}")
        return "\n".join(parts)


def cache_dir() -> Path:
    return Path(os.environ.get("CRATE_DEPLOY_CACHE", "/var/cache/crate-deploy"))


def default_rootfs() -> Path:
    """Where ``.ci/container-rootfs`` puts the root (honours ``CRATE_DEPLOY_CACHE``)."""
    return cache_dir() / f"rootfs-{SUITE}"


def container_available(rootfs: Path | None = None) -> str | None:
    """None if a container can be booted here, else the reason to skip."""
    if not sys.platform.startswith("linux"):
        return "systemd containers need Linux"
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}: run {BUILD_SCRIPT.relative_to(REPO_ROOT)}"
    root = rootfs or default_rootfs()
    if not (root / MARKER_NAME).is_file() or not (root / "lib/systemd/systemd").exists():
        return f"no container root at {root}: run {BUILD_SCRIPT.relative_to(REPO_ROOT)}"
    return None


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a container test; fail it instead under CI (CI=true or
    CRATE_DEPLOY_REQUIRE_CONTAINER=1), where a missing container is a broken setup."""
    import pytest

    if os.environ.get("CI") == "true" or os.environ.get("CRATE_DEPLOY_REQUIRE_CONTAINER") == "1":
        pytest.fail(f"container test cannot run: {reason}")
    pytest.skip(reason)


# --- cgroups -----------------------------------------------------------------------


def _cgroup_parents() -> list[Path]:
    """This process's cgroup directories in the hierarchies systemd-nspawn uses.

    That is the cgroup2 hierarchy and, on a hybrid/legacy host, the
    ``name=systemd`` one. Each container runs in a child cgroup of its own in
    each: with ``--keep-unit`` systemd-nspawn splits its cgroup into
    ``payload/`` and ``supervisor/``, so two containers sharing one cgroup
    would share one payload.
    """
    mounts: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3:
                continue
            if rfields[0] == "cgroup2":
                mounts.setdefault("", Path(fields[4]))
            elif rfields[0] == "cgroup" and "name=systemd" in rfields[2].split(","):
                mounts.setdefault("name=systemd", Path(fields[4]))
    parents: list[Path] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            mount = mounts.get(controllers)
            if mount is not None:
                parents.append(mount / path.lstrip("/"))
    return parents


def _cgroup_pids(directory: Path) -> set[int]:
    pids: set[int] = set()
    for procs in directory.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def _remove_cgroup(directory: Path) -> bool:
    """rmdir the cgroup tree bottom-up; False if some of it is still in use."""
    if not directory.exists():
        return True
    dirs = sorted((d for d in directory.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts))
    for d in [*dirs, directory]:
        with contextlib.suppress(OSError):
            d.rmdir()
    return not directory.exists()


def _remove_stale_cgroups(parents: Iterable[Path]) -> None:
    """Remove empty cgroups left by containers whose test process died."""
    for parent in parents:
        with contextlib.suppress(OSError):
            for d in parent.glob(f"{_CGROUP_PREFIX}*"):
                if d.is_dir() and not _cgroup_pids(d):
                    _remove_cgroup(d)


def _child_setup(cgroup_procs: Sequence[Path]) -> Callable[[], None]:
    """preexec_fn for systemd-nspawn: own cgroup, SIGTERM when the test process dies."""
    paths = [os.fsencode(p) for p in cgroup_procs]
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork

    def setup() -> None:
        for p in paths:
            with contextlib.suppress(OSError):
                fd = os.open(p, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return setup


# --- processes --------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(entry.name))
    return kids


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _pid_ns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


BindSpec = tuple["str | os.PathLike[str]", str]


class Container:
    """A booted ``systemd-nspawn`` container over the cached root (context manager).

    ``bind_ro`` / ``bind``: (host path, container path) pairs, mounted read-only /
    read-write. ``extra_args``: more systemd-nspawn options; words after the
    options reach the container's systemd as its kernel command line (for example
    ``systemd.wants=UNIT``, ``systemd.log_level=debug``). ``unified_cgroup``: give
    the container a pure cgroup v2 hierarchy (the host's own layout otherwise).
    ``bpf``: let the container's systemd load BPF programs (IP firewalling, device
    control). Resource controllers (MemoryMax=, CPUQuota=, TasksMax=) are enforced
    only if the host delegates them; on a hybrid host they are not. After ``__enter__``,
    ``pid`` is the container's PID 1 as seen from the host, ``boot_seconds`` the
    time from spawn to the end of boot, ``boot_state`` "running" or "degraded",
    ``failed_units`` the units that failed during boot.
    """

    def __init__(
        self,
        rootfs: Path | None = None,
        *,
        bind_ro: Iterable[BindSpec] = (),
        bind: Iterable[BindSpec] = (),
        extra_args: Sequence[str] = (),
        name: str | None = None,
        unified_cgroup: bool = True,
        bpf: bool = True,
        boot_timeout: float = 90.0,
        poweroff_timeout: float = 90.0,
    ) -> None:
        self.rootfs = rootfs or default_rootfs()
        self.name = name or f"crate-{uuid.uuid4().hex[:10]}"
        self.bind_ro = [(Path(h), c) for h, c in bind_ro]
        self.bind = [(Path(h), c) for h, c in bind]
        self.extra_args = list(extra_args)
        self.unified_cgroup = unified_cgroup
        self.bpf = bpf
        self.boot_timeout = boot_timeout
        self.poweroff_timeout = poweroff_timeout
        self.pid = 0
        self.boot_seconds = 0.0
        self.boot_state = ""
        self.failed_units: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid_ns = ""
        self._console: IO[bytes] | None = None
        self._lock: IO[bytes] | None = None
        self._cgroups: list[Path] = []

    # -- lifecycle --------------------------------------------------------------

    def __enter__(self) -> Container:
        # The container's systemd has been seen to hang right after "Initializing machine
        # ID" until the boot timeout (4 of about 12 boots in one loaded full run; the next
        # boot of the same root answered in seconds). The boot is the tests' scaffolding,
        # not what they test: a hung boot is tried once more, and said.
        for attempt in (1, 2):
            try:
                self.start()
                return self
            except ContainerError as error:
                self.stop()
                if attempt == 2 or "boot" not in str(error).splitlines()[0]:
                    raise
                warnings.warn(ContainerWarning(f"container {self.name}: boot hung ("
                                               f"{str(error).splitlines()[0]}); booting again"),
                              stacklevel=2)
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Spawn the container and wait until its boot has finished."""
        reason = container_available(self.rootfs)
        if reason:
            raise ContainerError(reason)
        for host, _ in [*self.bind_ro, *self.bind]:
            if not host.exists():
                raise ContainerError(f"bind source {host} does not exist")
        # Shared lock: .ci/container-rootfs takes it exclusively before replacing the root.
        lock_path = self.rootfs.parent / f".rootfs-{SUITE}.lock"
        with contextlib.suppress(OSError):
            self._lock = lock_path.open("ab")
            fcntl.flock(self._lock, fcntl.LOCK_SH)

        parents = _cgroup_parents()
        _remove_stale_cgroups(parents)
        procs: list[Path] = []
        for parent in parents:
            cg = parent / f"{_CGROUP_PREFIX}{self.name}"
            with contextlib.suppress(OSError):
                cg.mkdir()
                self._cgroups.append(cg)
                procs.append(cg / "cgroup.procs")

        cmd = [
            "systemd-nspawn",
            f"--directory={self.rootfs}",
            f"--machine={self.name}",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=read-only",  # to self._console; "passive" blocks once its pty fills
            "--link-journal=no",
            "--volatile=overlay",
            # SIGTERM to systemd-nspawn (the parent-death signal, see _child_setup)
            # kills the container outright; stop() powers it off properly instead.
            "--kill-signal=SIGKILL",
            # bpf() is outside systemd-nspawn's default seccomp allow list; without it the
            # container's systemd cannot enforce IPAddressDeny=/IPAddressAllow= (BPF
            # firewall) nor, on cgroup v2, DevicePolicy=/DeviceAllow= (BPF device control).
            *(["--system-call-filter=bpf"] if self.bpf else []),
            *(f"--bind-ro={h}:{c}" for h, c in self.bind_ro),
            *(f"--bind={h}:{c}" for h, c in self.bind),
            *self.extra_args,
        ]
        env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"}
        if self.unified_cgroup:
            # A pure cgroup v2 view inside, as on a Debian 12 server, even on a hybrid host.
            env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        # Unlinked at once, so nothing is left however the test ends; closed in stop().
        self._console = tempfile.TemporaryFile(prefix=f"{self.name}.")  # noqa: SIM115
        started = time.monotonic()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup(procs),
            env=env,
        )
        deadline = started + self.boot_timeout
        self.pid = self._find_init(deadline)
        self._pid_ns = _pid_ns(self.pid)
        self._wait_booted(deadline)
        self.boot_seconds = time.monotonic() - started

    def _find_init(self, deadline: float) -> int:
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ContainerError(
                    f"systemd-nspawn exited with {self._proc.returncode} before booting:\n"
                    + self.console()
                )
            for kid in _children(self._proc.pid):
                if _comm(kid) == "systemd":
                    return kid
            time.sleep(0.02)
        raise ContainerError("container init did not start in time:\n" + self.console())

    def _wait_booted(self, deadline: float) -> None:
        last = ""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ContainerError(f"boot did not finish in time (last answer {last!r})")
            try:
                res = self.run(
                    ["systemctl", "is-system-running", "--wait"],
                    check=False,
                    timeout=remaining,
                )
            except subprocess.TimeoutExpired:
                continue
            answer = (res.stdout.strip() or res.stderr.strip()).splitlines()
            last = answer[-1] if answer else ""
            if last in ("running", "degraded"):
                self.boot_state = last
                break
            if last in ("maintenance", "stopping"):
                raise ContainerError(f"container boot ended {last!r}:\n" + self.console())
            # Not up far enough to answer yet ("Failed to connect to bus", ...), or asked
            # in the instant before the manager answers on its socket ("offline": seen once
            # in a loaded run, the next boots answering "running"): ask again until the
            # deadline, which reports the last answer.
            time.sleep(0.05)
        if self.boot_state == "degraded":
            self.failed_units = self.list_failed_units()
            details = "\n".join(self.journal(u, lines=20) for u in self.failed_units)
            warnings.warn(
                ContainerWarning(
                    f"container {self.name} booted degraded; failed units: "
                    f"{', '.join(self.failed_units) or '?'}\n{details}"
                ),
                stacklevel=4,
            )

    def stop(self) -> None:
        """Power off, wait, then kill whatever is left. Safe to call more than once."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if self._init_alive():
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    self.run(["systemctl", "poweroff", "--no-block"], check=False, timeout=15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.poweroff_timeout)
        # Whatever is left: the container's init (SIGKILL to it ends its whole PID
        # namespace), the systemd-nspawn process group, our cgroups.
        if self._init_alive():
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        if proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
        for cg in self._cgroups:
            for _ in range(50):
                pids = _cgroup_pids(cg)
                for p in pids:
                    with contextlib.suppress(OSError):
                        os.kill(p, signal.SIGKILL)
                if _remove_cgroup(cg):
                    break
                time.sleep(0.1)
        self._cgroups = []
        if self._console is not None:
            self._console.close()
            self._console = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self._proc = None

    def _init_alive(self) -> bool:
        return bool(self.pid) and bool(self._pid_ns) and _pid_ns(self.pid) == self._pid_ns

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and self._init_alive()

    def console(self) -> str:
        """systemd-nspawn's output and the container's console so far."""
        if self._console is None:
            return ""
        self._console.flush()
        self._console.seek(0)
        text = self._console.read().decode(errors="replace")
        self._console.seek(0, os.SEEK_END)
        return _ANSI_ESCAPE.sub("", text)

    # -- commands ---------------------------------------------------------------

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` inside the container (all its namespaces, root, clean env).

        Raises ContainerCommandError (with the output) if ``check`` and the exit
        status is non-zero, subprocess.TimeoutExpired after ``timeout`` seconds
        (the command is then killed inside the container too).
        """
        if not self.pid:
            raise ContainerError("container is not running")
        full_env = {**CONTAINER_ENV, **(env or {})}
        inner = [
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in full_env.items()),
            "timeout",
            "--kill-after=5",
            f"{timeout:.3f}",
            *args,
        ]
        cmd = ["nsenter", f"--target={self.pid}", "--all", "--", *inner]
        started = time.monotonic()
        res = subprocess.run(
            cmd,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout + 15,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )
        if res.returncode in (124, 137) and time.monotonic() - started >= timeout:
            raise subprocess.TimeoutExpired(list(args), timeout, res.stdout, res.stderr)
        res.args = list(args)
        if check and res.returncode != 0:
            raise ContainerCommandError(res.returncode, list(args), res.stdout, res.stderr)
        return res

    def systemctl(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def unit_properties(self, unit: str, *names: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit`` (all of them if no names)."""
        args = ["show", unit, *(f"--property={n}" for n in names)]
        out = self.systemctl(*args).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def list_failed_units(self) -> list[str]:
        out = self.systemctl("list-units", "--failed", "--plain", "--no-legend", check=False)
        return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]

    def journal(
        self, unit: str | None = None, *, lines: int | None = None, output: str = "short-precise"
    ) -> str:
        """The container's journal (this boot), optionally of one unit."""
        args = ["journalctl", "--no-pager", "--boot", f"--output={output}"]
        if unit:
            args.append(f"--unit={unit}")
        if lines is not None:
            args.append(f"--lines={lines}")
        return self.run(args, check=False, timeout=60).stdout

    def write_file(self, path: str, content: str | bytes, *, mode: int = 0o644) -> None:
        """Write ``content`` to ``path`` in the container (parents created, root-owned)."""
        data = content.decode() if isinstance(content, bytes) else content
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" -- "$1"'
        self.run(["sh", "-c", script, "sh", path, f"{mode:o}"], input=data)

    def install_units(
        self, directory: str | os.PathLike[str], *, enable: bool = False, reload: bool = True
    ) -> list[str]:
        """Copy the unit files of ``directory`` into /etc/systemd/system.

        Also copies drop-in directories (``NAME.d/*.conf``); other files are
        ignored. With ``enable`` runs ``systemctl enable`` on the units except
        templates (``NAME@.service``), creating the ``*.wants/`` links their
        [Install] sections ask for. Returns the unit names, sorted.
        """
        src = Path(directory)
        units: list[str] = []
        for entry in sorted(src.iterdir()):
            if entry.is_file() and entry.suffix in UNIT_SUFFIXES:
                self.write_file(f"/etc/systemd/system/{entry.name}", entry.read_text())
                units.append(entry.name)
            elif entry.is_dir() and entry.name.endswith(".d"):
                for conf in sorted(entry.glob("*.conf")):
                    dest = f"/etc/systemd/system/{entry.name}/{conf.name}"
                    self.write_file(dest, conf.read_text())
        if not units:
            raise ContainerError(f"no unit files in {src}")
        if reload:
            self.systemctl("daemon-reload")
        to_enable = [u for u in units if "@." not in u]
        if enable and to_enable:
            self.systemctl("enable", *to_enable)
        return units
