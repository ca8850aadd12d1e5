"""Advisory locks on files in the output directory, so two runs never interleave.

flock(2) locks belong to an open file and vanish with the process that holds them
(a SIGKILLed launch leaves no stale lock). The lock file is opened without following
a symbolic link, so whoever can write the directory cannot point it elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from crate_deploy.errors import CrateDeployError

LOCK_MODE = 0o644


class Busy(CrateDeployError):
    """Another process holds the lock (only raised when not waiting for it)."""


def open_lock_file(path: Path, *, create: bool) -> int | None:
    """A descriptor on the lock file (None when it does not exist and create is false)."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        descriptor = os.open(path, flags, LOCK_MODE)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CrateDeployError(f"{path} is a symbolic link; crate-deploy does not follow "
                                   "one: remove it") from None
        raise
    os.fchmod(descriptor, LOCK_MODE)  # not the caller's umask
    return descriptor


def take_lock(descriptor: int, *, exclusive: bool, wait: bool, path: Path) -> None:
    operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.flock(descriptor, operation)
    except BlockingIOError:
        raise Busy(f"{path} is locked by another process") from None


def lock_holders(path: Path) -> set[int]:
    """The pids holding a flock on path, from /proc/locks (empty if none, or unknown)."""
    try:
        info = path.lstat()
        text = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    holders = set()
    for line in text.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" ("->" marks a waiter)
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        device, _, inode = fields[5].rpartition(":")
        major, _, minor = device.partition(":")
        with contextlib.suppress(ValueError):
            if (int(inode) == info.st_ino and os.makedev(int(major, 16), int(minor, 16))
                    == info.st_dev):
                holders.add(int(fields[4]))
    return holders
