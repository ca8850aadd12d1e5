"""The cheap half of `crate-deploy check`: what can be known about this machine without
loading the application (no Celery, no subprocess), so `launch` runs it every time.

- every ${REFERENCE} the site uses is in the secrets file (names only, never values);
- Flower, when enabled, is installed in the target venv;
- the paths the services need survive their units' hardening: ProtectHome= and
  PrivateTmp= hide /home, /root, /run/user and /tmp, /var/tmp; a state directory
  ProtectSystem=strict would need to exist; the service user (or DynamicUser=, which is
  "anyone") can reach the config and state directories;
- each service's user can run its program (through the venv's interpreter, and every
  directory on the way) and enter its working directory (inspect/access.py);
- Flower's port is free, or held by this site's own running Flower (the only check of
  it, as each check below has one owner).
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crate_deploy.errors import LaunchError
from crate_deploy.inspect.access import service_problems
from crate_deploy.plan.names import flower_unit
from crate_deploy.plan.placement import runs_flower
from crate_deploy.plan.services import build_plan
from crate_deploy.state.deployment import Deployment, _referenced_names
from crate_deploy.state.envfile import EnvironmentFileError, read_environment_file
from crate_deploy.state.launch import read_launch_state

SYSTEMD_RUNNING = Path("/run/systemd/system")  # exists only while systemd is PID 1
HIDDEN_BY = {
    "ProtectHome=yes": ("/home", "/root", "/run/user"),
    "PrivateTmp=yes": ("/tmp", "/var/tmp"),  # noqa: S108 - the paths PrivateTmp= replaces
}


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning" | "ok"
    kind: str  # what was checked: secrets, flower, hardening, access, port, app, task, ...
    message: str

    def line(self) -> str:
        return f"{self.severity}: {self.kind}: {self.message}"


def preflight(deployment: Deployment, *, sandboxed: bool = True) -> list[Finding]:
    """Every cheap finding for a rendered site; sandboxed=False for a foreground launch,
    which applies no systemd hardening (but does switch to `user:` when run as root)."""
    return [*secret_findings(deployment), *flower_findings(deployment),
            *path_findings(deployment, sandboxed=sandboxed), *port_findings(deployment)]


def refuse_unless_clear(deployment: Deployment, *, sandboxed: bool) -> None:
    """For launch: stop before starting anything if a cheap check finds an error."""
    errors = [finding for finding in preflight(deployment, sandboxed=sandboxed)
              if finding.severity == "error"]
    if errors:
        raise LaunchError("pre-flight check failed (`crate-deploy check` says more):\n  "
                          + "\n  ".join(f"{e.kind}: {e.message}" for e in errors))


def secret_findings(deployment: Deployment) -> Iterator[Finding]:
    site = deployment.site
    names = sorted(_referenced_names(site))
    if not names:
        return
    if not site.secrets_file:
        yield Finding("error", "secrets", f"the site refers to {', '.join(names)} but names "
                      "no secrets_file")
        return
    path = Path(site.secrets_file)
    try:
        found = read_environment_file(path, "the secrets file")
    except EnvironmentFileError as exc:
        hint = ": the services read it at start; run check as root (or as the service user)"
        yield Finding("error", "secrets", f"{exc}{hint if exc.unreadable else ''}")
        return
    missing = [name for name in names if name not in found]
    if missing:
        yield Finding("error", "secrets", f"{path} lacks {', '.join(missing)}: add "
                      f"{missing[0]}=... (the site refers to it as ${{{missing[0]}}})")
    else:
        yield Finding("ok", "secrets", f"{', '.join(names)} are set in {path}")


def flower_findings(deployment: Deployment) -> Iterator[Finding]:
    site = deployment.site
    if not site.flower.enabled or not site.venv:
        return
    packages = list(Path(site.venv).glob("lib/python3*/site-packages"))
    if not packages:
        return  # the venv is not on this machine: the app check says so
    if any(any(folder.glob("flower-*.dist-info")) for folder in packages):
        yield Finding("ok", "flower", f"flower is installed in {site.venv}")
    else:
        yield Finding("error", "flower", f"flower is enabled but not installed in {site.venv}: "
                      f"{site.venv}/bin/pip install flower (or flower.enabled: false)")


def path_findings(deployment: Deployment, *, sandboxed: bool = True) -> Iterator[Finding]:
    site = deployment.site
    hardened = sandboxed and site.systemd.hardening and site.systemd.scope == "system"
    paths = _service_paths(deployment)
    if hardened:
        for what, path in paths.items():
            if what == "secrets_file":
                continue  # systemd itself reads it, before it sets up the sandbox
            for setting, roots in HIDDEN_BY.items():
                if any(path == root or path.startswith(root + "/") for root in roots):
                    yield Finding("error", "hardening", f"{what} {path} is under "
                                  f"{_root(path, roots)}, which the units' {setting} hides from "
                                  "the services: move it, or set systemd.hardening: false")
        state = deployment.state_dir
        if state != f"/var/lib/{site.project}" and not Path(state).is_dir():
            yield Finding("error", "hardening", f"state directory {state} does not exist: "
                          "ProtectSystem=strict makes everything else read-only, and systemd "
                          f"refuses a missing ReadWritePaths=; create it (owned by the service "
                          "user)")
    # (A foreground launch run as root switches to `user:` too.) The programs and working
    # directories are service_findings' (one owner per check); the rest is looked at here.
    systemd = sandboxed and site.systemd.scope == "system"
    if systemd or (site.user and os.geteuid() == 0):
        yield from _access_findings(site.user, {what: path for what, path in paths.items()
                                                if what in ("config_dir", "state_dir")})
    yield from service_findings(deployment, systemd=systemd)


def service_findings(deployment: Deployment, *, systemd: bool) -> Iterator[Finding]:
    """Can each service's user run its program and enter its working directory (as
    systemd's units run them, or as a foreground launch does)? inspect/access.py walks."""
    chosen = {name.removesuffix(".service") for name in deployment.services}
    plan = build_plan(deployment.site, deployment.config_dir, deployment.host)
    services = [service for service in plan.services if service.name in chosen]
    for problem, names in service_problems(services, systemd=systemd).items():
        yield Finding("error", "access", f"{', '.join(names)} cannot start: {problem}")


def port_findings(deployment: Deployment) -> Iterator[Finding]:
    """Flower's port: the one check of it, for `check`, `launch` and `launch --systemd`.

    Whether Flower could bind it now is asked of the kernel (a bind as Flower's, with
    SO_REUSEADDR); who holds it, of /proc (their name only: arguments may hold secrets)."""
    site = deployment.site
    if not runs_flower(site, deployment.host):
        return  # no Flower here (disabled, or another host's share runs it)
    flower = site.flower
    service = flower_unit(site).removesuffix(".service")
    address = flower.address or "0.0.0.0"  # noqa: S104 - Flower's own default
    where = f"{address}:{flower.port}"
    try:
        free = _bindable(address, flower.port)
    except socket.gaierror as exc:
        yield Finding("error", "port", f"{service} cannot start: cannot resolve Flower's "
                      f"address {address!r}: {exc}")
        return
    if free:
        yield Finding("ok", "port", f"{where} (Flower) is free")
        return
    listening, holders = listeners(flower.port)
    if holders and holders <= _own_pids(deployment):
        yield Finding("ok", "port", f"{where} is held by this site's own running Flower")
    elif listening:
        who = ", ".join(f"pid {pid} ({_command(pid)})" for pid in sorted(holders)) or (
            "another process")
        yield Finding("error", "port", f"{service} cannot start: port {flower.port} on "
                      f"{address} (flower.port) is in use by {who} (OSError: [Errno "
                      f"{errno.EADDRINUSE}] Address already in use): stop it, or choose "
                      "another flower.port")
    else:
        # Nobody listens, but a connection uses it as its local end right now: an ephemeral
        # port, which any outgoing connection may take again when Flower starts.
        yield Finding("warning", "port", f"{where} (flower.port) is the local end of a "
                      "connection right now, so Flower could fail to bind it: choose a port "
                      "outside the ephemeral range (/proc/sys/net/ipv4/ip_local_port_range)")


def listeners(port: int) -> tuple[bool, set[int]]:
    """Whether a socket listens on TCP `port` (any address), and the pids we can see
    holding it, from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return False, set()
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _holds_socket(entry, inodes):
            pids.add(int(entry.name))
    return True, pids


def _holds_socket(proc: Path, inodes: set[str]) -> bool:
    try:
        fds = list((proc / "fd").iterdir())
    except OSError:
        return False  # gone, or not ours to look at
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for fd in fds:
        try:
            if str(fd.readlink()) in wanted:
                return True
        except OSError:
            continue  # closed meanwhile (listing the directory opens one itself)
    return False


def _bindable(address: str, port: int) -> bool:
    """Could Flower bind address:port now? Every address it resolves to, with SO_REUSEADDR
    as Flower (tornado) binds, so a port in TIME_WAIT counts as free; an address family
    this machine lacks (no IPv6) is skipped, as Flower skips it. socket.gaierror when the
    address does not resolve."""
    host = None if address in ("0.0.0.0", "::") else address  # noqa: S104 - any address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return False
    return True


def _command(pid: int) -> str:
    """A process's name only: its arguments may hold someone else's secrets."""
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8",
                                                  errors="replace").strip() or "?"
    except OSError:
        return "?"


def _own_pids(deployment: Deployment) -> set[int]:
    """This site's running services (a foreground launch's, or systemd's main pids: an
    upgrade with launch --systemd runs while they hold their ports) and their descendants."""
    state = read_launch_state(deployment) or {}
    roots = {pid for pid, alive in state.values() if alive} | _systemd_main_pids(deployment)
    return roots | {pid for root in roots for pid in _descendants(root)}


def _systemd_main_pids(deployment: Deployment) -> set[int]:
    if not SYSTEMD_RUNNING.is_dir() or not shutil.which("systemctl"):
        return set()
    scope = ["--user"] if deployment.site.systemd.scope == "user" else []
    result = subprocess.run(["systemctl", *scope, "show", "--property=MainPID", "--value",
                             *deployment.services], capture_output=True, text=True,
                            timeout=30, check=False)
    return {int(word) for word in result.stdout.split() if word.isdigit() and word != "0"}


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            text = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if text:
            children.setdefault(int(text[text.rindex(")") + 2:].split()[1]), []).append(
                int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _service_paths(deployment: Deployment) -> dict[str, str]:
    site = deployment.site
    paths = {"working_directory": site.working_directory, "venv": site.venv,
             "config_dir": deployment.config_dir, "state_dir": deployment.state_dir,
             "secrets_file": site.secrets_file}
    interpreter = _interpreter(site.venv)
    if interpreter:
        paths["the venv's interpreter"] = interpreter
    return {what: path for what, path in paths.items() if path}


def _interpreter(venv: str | None) -> str | None:
    """The real file VENV/bin/python runs (pyenv keeps it under a home directory)."""
    if not venv:
        return None
    python = Path(venv) / "bin" / "python"
    return str(python.resolve()) if python.exists() else None


def _root(path: str, roots: tuple[str, ...]) -> str:
    return next(root for root in roots if path == root or path.startswith(root + "/"))


def _access_findings(user: str | None, paths: dict[str, str]) -> Iterator[Finding]:
    """Can the service user reach each path? DynamicUser= (no user) is a stranger to all."""
    try:
        account = pwd.getpwnam(user) if user else None
    except KeyError:
        yield Finding("error", "access", f"user {user} does not exist on this machine")
        return
    who = f"user {user}" if user else "the DynamicUser= of the units"
    for what, path in paths.items():
        if what == "secrets_file" or not Path(path).exists():
            continue  # systemd reads the secrets file as root; a missing path is not ours
        blocked = _first_blocked(Path(path), account, want_read=what.startswith("the venv"))
        if blocked:
            yield Finding("error", "access", f"{who} cannot reach {what} {path}: {blocked}; "
                          "make it readable (chmod o+rx on the directories), or move it")


def _first_blocked(path: Path, account: pwd.struct_passwd | None,
                   want_read: bool) -> str | None:
    chain = [*reversed(path.parents), path]
    for index, step in enumerate(chain):
        last = index == len(chain) - 1
        need = (stat.S_IROTH if want_read and last else 0) | (
            0 if last and not step.is_dir() else stat.S_IXOTH)
        if need and not _allowed(step, account, need):
            return f"{step} is mode {stat.S_IMODE(step.stat().st_mode):04o}"
    return None


def _allowed(path: Path, account: pwd.struct_passwd | None, other_bits: int) -> bool:
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if account is None:
        return mode & other_bits == other_bits
    if account.pw_uid == 0:
        return True
    if info.st_uid == account.pw_uid:
        return mode & (other_bits << 6) == other_bits << 6
    groups = {account.pw_gid, *os.getgrouplist(account.pw_name, account.pw_gid)}
    if info.st_gid in groups:
        return mode & (other_bits << 3) == other_bits << 3
    return mode & other_bits == other_bits
