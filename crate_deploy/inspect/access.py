"""Can each service's user run its program and enter its working directory? The one
check of it, in check's cheap part (inspect/preflight.py), which `check`, `launch` and
`launch --systemd` run before anything starts: what would otherwise fail later, and
slowly (203/EXEC, 200/CHDIR, or a foreground launch's "failed to start").

The program (argv[0]) must exist and be runnable by the user it will run as -- every
directory on the way searchable, the file executable, a `#!` script readable and its
interpreter runnable in turn (a venv's python is often a symlink into a pyenv under a
home directory the service user cannot enter) -- and its working directory must be
enterable.

Who that is: under systemd (system units), User= with the groups systemd gives it (its
own and its supplementary groups), or for DynamicUser= a uid no file belongs to; in a
foreground launch run as root, User= with only its own group (launch switches so);
anyone else runs the fleet as themselves.

The permission walk reads mode bits (owner, group, other; root passes every search
and needs one execute bit on a file), not ACLs: what the kernel would refuse for a
plain setup, with the directory that refuses named.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from crate_deploy.plan.services import Service

_MAX_LINKS = 40  # the kernel's ELOOP limit
_NO_FILES_UID = -1  # DynamicUser=: a uid allocated at start, owning no file here


@dataclass(frozen=True)
class Identity:
    """Who a service runs as: the uid, the groups whose permission bits apply, a name."""

    uid: int
    groups: frozenset[int]
    name: str


def identity_for(user: str | None, group: str | None, *, systemd: bool) -> Identity:
    """Who runs a service with this User=/Group=: under systemd (system units), or in a
    foreground launch. KeyError when the user or group does not exist here."""
    if systemd and user is None:
        return Identity(_NO_FILES_UID, frozenset(), "the DynamicUser= of the units")
    if user is not None and (systemd or os.geteuid() == 0):
        account = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group is not None else account.pw_gid
        # systemd adds the user's supplementary groups; launch switches to one group only.
        extra = os.getgrouplist(user, account.pw_gid) if systemd else []
        return Identity(account.pw_uid, frozenset({gid, *extra}), user)
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return Identity(uid, frozenset({os.getegid(), *os.getgroups()}), name)


def service_problems(services: Iterable[Service], *, systemd: bool) -> dict[str, list[str]]:
    """Each reason a service cannot start, with the services it stops (services sharing a
    venv share it), in service order. A user that does not exist is said elsewhere."""
    problems: dict[str, list[str]] = {}
    for service in services:
        try:
            who = identity_for(service.user, service.group, systemd=systemd)
        except KeyError:
            # A missing user is check's access finding (said once for all); the user
            # exists, so the group does not.
            if service.group is not None and _exists(pwd.getpwnam, service.user):
                problems.setdefault(f"group {service.group} does not exist on this machine "
                                    "(the units' Group=; systemd would refuse them with "
                                    "216/GROUP): set group: to one that does",
                                    []).append(service.name)
            continue
        for problem in (executable_problem(service.argv[0], who),
                        directory_problem(Path(service.working_directory or "/"), who)):
            if problem is not None:
                problems.setdefault(problem, []).append(service.name)
    return problems


def _exists(lookup: Callable[[str], object], name: str | None) -> bool:
    try:
        return name is not None and lookup(name) is not None
    except KeyError:
        return False


def executable_problem(program: str, who: Identity) -> str | None:
    """Why `who` cannot run program, or None when the kernel would let them."""
    if not program.startswith("/"):
        return None  # systemd searches its own PATH; nothing to say about that here
    return _runnable(program, who, depth=0)


def directory_problem(directory: Path, who: Identity) -> str | None:
    """Why `who` cannot make directory their working directory, or None."""
    found = _walk(str(directory), who)
    if isinstance(found, str):
        return f"cannot enter the working directory {directory}: {found}"
    if not stat.S_ISDIR(found.st_mode):
        return f"the working directory {directory} is not a directory"
    if not _allowed(found, who, 0o1):
        return f"{who.name} cannot enter the working directory {directory} ({_describe(found)})"
    return None


def _runnable(program: str, who: Identity, depth: int) -> str | None:
    found = _walk(program, who)
    if isinstance(found, str):
        return f"cannot run {program} as {who.name}: {found}"
    if not stat.S_ISREG(found.st_mode):
        return f"cannot run {program}: it is not a regular file"
    if not _allowed(found, who, 0o1, file=True):
        return f"{who.name} may not execute {program} ({_describe(found)})"
    interpreter = _interpreter(program)
    if interpreter is None:
        return None
    if not _allowed(found, who, 0o4):
        return f"{who.name} may not read the script {program} ({_describe(found)})"
    if depth >= 4:
        return f"cannot run {program}: interpreters nest too deep"
    problem = _runnable(interpreter, who, depth + 1)
    return None if problem is None else f"{program}'s interpreter: {problem}"


def _walk(path: str, who: Identity, links: int = 0) -> os.stat_result | str:
    """Follow path as the kernel would for `who`: the final stat, or what stops them."""
    current = Path("/")
    parts = Path(path).parts[1:]
    for index, part in enumerate(parts):
        directory = current.stat()
        if not _allowed(directory, who, 0o1):
            return f"{who.name} cannot search {current} ({_describe(directory)})"
        step = current / part
        try:
            info = step.lstat()
        except FileNotFoundError:
            return f"[Errno {errno.ENOENT}] No such file or directory: {str(step)!r}"
        except OSError as exc:
            return f"{exc.strerror}: {str(step)!r}"
        if stat.S_ISLNK(info.st_mode):
            if links >= _MAX_LINKS:
                return f"too many levels of symbolic links at {step}"
            link = step.readlink()
            target = os.path.normpath(current / link / Path(*parts[index + 1:]))
            followed = _walk(target, who, links + 1)
            if isinstance(followed, str):
                return f"{step} links to {link}, and {followed}"
            return followed
        current = step
    return current.stat()


def _allowed(info: os.stat_result, who: Identity, bit: int, file: bool = False) -> bool:
    """Whether the mode grants `bit` (1 = x/search, 4 = r) to who."""
    if who.uid == 0:  # root: any search, any read; a file still needs one x bit
        return not (file and bit == 0o1) or bool(info.st_mode & 0o111)
    if info.st_uid == who.uid:
        shift = 6
    elif info.st_gid in who.groups:
        shift = 3
    else:
        shift = 0
    return bool(info.st_mode & (bit << shift))


def _describe(info: os.stat_result) -> str:
    owner = _user_name(info.st_uid)
    return f"mode {stat.S_IMODE(info.st_mode):04o}, owner {owner}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _interpreter(program: str) -> str | None:
    """The interpreter a `#!` line names, or None for a binary."""
    try:
        with Path(program).open("rb") as file:
            head = file.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    return words[0].decode("utf-8", "replace") if words else None
