"""Writing inside the output directory through descriptors, for write.py's apply_changes.

Each folder is opened once, without following a symbolic link, and every file is staged
and renamed relative to its folder's descriptor: a thousand files cost a thousand short
system calls each, not a thousand walks of the whole path nor a Path object each.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from crate_deploy.errors import RenderError

DIRECTORY_MODE = 0o755  # the service user reads its config: never 0700 under umask 077


class Folders:
    """Descriptors on the output directory and the folders below it, each opened once,
    created (with DIRECTORY_MODE) when missing, never through a symbolic link."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.top = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.opened: dict[str, int] = {"": self.top}

    def __enter__(self) -> Folders:
        return self

    def __exit__(self, *exc: object) -> None:
        for descriptor in self.opened.values():
            os.close(descriptor)

    def of(self, relative: str) -> tuple[int, str]:
        """(descriptor of the folder holding `relative`, its name there)."""
        if relative.startswith("/") or ".." in relative.split("/"):
            raise RenderError(f"refusing to write outside {self.output_dir}: {relative}")
        folder, _, name = relative.rpartition("/")
        return self._folder(folder), name

    def _folder(self, folder: str) -> int:
        if folder not in self.opened:
            parent, _, name = folder.rpartition("/")
            above = self._folder(parent)
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=above)  # no wider than asked, until fchmod
                self.opened[folder] = self._open(above, folder, name)
                os.fchmod(self.opened[folder], DIRECTORY_MODE)
            if folder not in self.opened:
                self.opened[folder] = self._open(above, folder, name)
        return self.opened[folder]

    def _open(self, above: int, folder: str, name: str) -> int:
        try:
            return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                           dir_fd=above)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and (
                    self.output_dir / folder).is_symlink():
                raise RenderError(f"{self.output_dir / folder} is a symbolic link: "
                                  "crate-deploy neither writes nor deletes through one; "
                                  "remove it and render again") from None
            raise


def stage_at(folder: int, name: str, content: bytes, mode: int) -> str:
    """Write content beside `name` in folder under a fresh temporary name (created 0600,
    then given its mode: never the caller's umask); the temporary name."""
    while True:
        temporary = f".{name}.{os.urandom(6).hex()}"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                 | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder)
        except FileExistsError:
            continue  # as mkstemp: someone else's name, draw another
        break
    try:
        try:
            os.fchmod(descriptor, mode)
            view = memoryview(content)
            while view:
                view = view[os.write(descriptor, view):]
        finally:
            os.close(descriptor)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder)
        raise
    return temporary
