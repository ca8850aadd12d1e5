"""The only code that changes the disk (with folders.py): puts rendered files in place.

Like Ansible, each file is reported as created, changed, unchanged or removed; an
unchanged file is not touched (its mtime stays); files an earlier render produced
and this one does not are removed; a file crate-deploy did not write is never
overwritten. Every new file is staged next to its target and renamed into place,
and nothing is renamed until everything is staged, so a failure leaves the
directory as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crate_deploy.errors import LaunchError, RenderError
from crate_deploy.folders import DIRECTORY_MODE, Folders, stage_at
from crate_deploy.locking import take_lock
from crate_deploy.plan.names import MANIFEST_FILE

if TYPE_CHECKING:  # only named in annotations: a status or a stop need not load the renderers
    from crate_deploy.render import RenderedFile


@dataclass(frozen=True)
class FileChange:
    """One file of a render against what the output directory holds: its status, old and
    new text (for --diff) and mode."""

    path: str
    status: str  # "created" | "changed" | "unchanged" | "removed"
    old: str | None
    new: str | None
    mode: int = 0o644

    def diff(self, mask: Callable[[str], str]) -> str:
        import difflib  # only --diff needs it

        old = mask(self.old or "").splitlines(keepends=True)
        new = mask(self.new or "").splitlines(keepends=True)
        lines = difflib.unified_diff(old, new, f"a/{self.path}", f"b/{self.path}")
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def plan_changes(output_dir: Path, files: list[RenderedFile]) -> list[FileChange]:
    """What writing `files` would do, without doing it."""
    owned = _read_manifest(output_dir)
    changes = []
    folders: dict[str, set[str] | None] = {}  # each folder's names, listed once
    for file in files:
        target = _inside(output_dir, file.path, folders)
        old = None if _absent(output_dir, file.path, folders) else _read_text(target)
        if old is not None and file.path not in owned:
            raise RenderError(f"{target} exists and was not written by crate-deploy; move it "
                              "away or render into another directory (-o)")
        status = "created" if old is None else ("unchanged" if old == file.content and
                                               _mode(target) == file.mode else "changed")
        changes.append(FileChange(file.path, status, old, file.content, file.mode))
    rendered = {file.path for file in files}
    for path in sorted(set(owned) - rendered):
        old = _read_text(_inside(output_dir, path))
        if old is not None:
            changes.append(FileChange(path, "removed", old, None))
    return changes


def apply_changes(output_dir: Path, changes: list[FileChange]) -> None:
    """Make the planned changes: stage every file, then rename them all into place (each
    through its folder's descriptor: folders.py)."""
    if all(change.status == "unchanged" for change in changes):
        return
    make_directories(output_dir)
    with Folders(output_dir) as folders:
        staged: list[tuple[int, str, str]] = []  # (folder, temporary name, name)
        try:
            for change in changes:
                if change.status in ("created", "changed") and change.new is not None:
                    folder, name = folders.of(change.path)
                    staged.append((folder, stage_at(folder, name, change.new.encode(),
                                                     change.mode), name))
            staged.append((folders.top, stage_at(folders.top, MANIFEST_FILE,
                                                  _manifest(changes), 0o644), MANIFEST_FILE))
            _sync(output_dir, staged)
        except OSError as exc:
            for folder, temporary, _ in staged:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=folder)
            raise RenderError(f"cannot write into {output_dir}: "
                              f"{exc.strerror or exc}") from None
        for folder, temporary, name in staged:
            os.rename(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        for change in changes:
            if change.status == "removed":
                folder, name = folders.of(change.path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=folder)


@contextlib.contextmanager
def render_lock(output_dir: Path, *, check: bool) -> Iterator[None]:
    """Hold a lock on the output directory itself (flock on its descriptor: no lock file
    to leave behind): exclusive to write, shared to check; a check creates nothing."""
    try:
        if not check:
            make_directories(output_dir)
        descriptor = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if not check:
            raise
        yield  # nothing rendered there yet: nothing to wait for
        return
    except OSError as exc:
        raise RenderError(f"cannot write into {output_dir}: {exc.strerror or exc}") from None
    try:
        take_lock(descriptor, exclusive=not check, wait=True, path=output_dir)
        yield
    finally:
        os.close(descriptor)


def write_file_atomically(path: Path, content: str, mode: int = 0o644) -> None:
    """Replace one small file (a state file) so readers see the old or the new, never half."""
    _stage(path, content.encode(), mode).replace(path)


def remove_file(path: Path) -> None:
    path.unlink(missing_ok=True)


def ensure_directory(path: Path, mode: int = 0o750,
                     owner: tuple[int, int] | None = None) -> None:
    """Create a directory a service needs (a state directory for foreground runs),
    owned by the service's user when it runs as one (systemd's StateDirectory= does).

    The mode is set, not left to the umask; the chown and chmod go through a descriptor
    opened without following a symbolic link: whoever can write the parent could
    otherwise swap in a link and have root chown whatever it points to."""
    make_directories(path.parent)
    created = False
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)  # no wider than asked for, whatever the umask, until fchmod
        created = True
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise LaunchError(f"{path} is not a plain directory (a symbolic link?): crate-deploy "
                              "neither follows nor chowns one; remove it") from None
        raise LaunchError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        if owner is not None:
            os.fchown(descriptor, *owner)
        if created:  # a directory the site named and someone else made keeps its mode
            os.fchmod(descriptor, mode)
    finally:
        os.close(descriptor)


def make_directories(path: Path, mode: int = DIRECTORY_MODE) -> None:
    """mkdir -p with an explicit mode for what it creates (never the caller's umask)."""
    if path.is_dir():
        return
    make_directories(path.parent, mode)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
        path.chmod(mode)


def _stage(target: Path, content: bytes, mode: int, *, sync: bool = True) -> Path:
    """Write content next to target under a temporary name (on disk if sync)."""
    make_directories(target.parent)
    descriptor, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        Path(name).chmod(mode)
    except OSError:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _sync(directory: Path, staged: list[tuple[int, str, str]]) -> None:
    """Put staged files (folder, temporary name, name) on disk before they are renamed into
    place: one syncfs(2) for the filesystem (1,000 fsyncs took over a second), else an
    fsync per file."""
    try:
        import ctypes

        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        syncfs = None
    if syncfs is not None:
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            if syncfs(descriptor) == 0:
                return
        finally:
            os.close(descriptor)
    for folder, temporary, _ in staged:
        descriptor = os.open(temporary, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _manifest(changes: list[FileChange]) -> bytes:
    files = {change.path: hashlib.sha256(change.new.encode()).hexdigest()
             for change in changes if change.new is not None}
    return (json.dumps({"files": files}, indent=2, sort_keys=True) + "\n").encode()


def rendered_digests(output_dir: Path) -> dict[str, str]:
    """What the last render wrote into output_dir: relative path -> sha256 of its content."""
    return _read_manifest(output_dir)


def _read_manifest(output_dir: Path) -> dict[str, str]:
    text = _read_text(output_dir / MANIFEST_FILE)
    if text is None:
        return {}
    try:
        files = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError):
        raise RenderError(f"{output_dir / MANIFEST_FILE} is damaged; remove it (and the "
                          "files it listed) to render afresh") from None
    return {str(path): str(digest) for path, digest in files.items()}


def _absent(output_dir: Path, relative: str, folders: dict[str, set[str] | None]) -> bool:
    """relative is surely not there: its folder's listing (read once) lacks it. A new
    directory of 1,000 files is two listings, not 1,000 failed opens; anything unsure (the
    folder unreadable) is left to _read_text."""
    folder, _, name = relative.rpartition("/")
    if folder not in folders:
        try:
            folders[folder] = set(os.listdir(output_dir / folder))  # noqa: PTH208 - names
        except (FileNotFoundError, NotADirectoryError):
            folders[folder] = set()
        except OSError:
            folders[folder] = None
    listed = folders[folder]
    return listed is not None and name not in listed


def _inside(output_dir: Path, relative: str, checked: Container[str] = ()) -> Path:
    """output_dir/relative, refusing a way out: "..", an absolute path, or a directory on
    the way that is a symbolic link (a manifest entry through one would make us write or
    delete wherever it points); folders in `checked` were looked at already."""
    path = output_dir / relative
    if ".." in Path(relative).parts or Path(relative).is_absolute():
        raise RenderError(f"refusing to write outside {output_dir}: {relative}")
    for parent in list(Path(relative).parents)[:-1]:
        if str(parent) not in checked and (output_dir / parent).is_symlink():
            raise RenderError(f"{output_dir / parent} is a symbolic link: crate-deploy neither "
                              "writes nor deletes through one; remove it and render again")
    return path


def _read_text(path: Path) -> str | None:
    """A rendered file's text, never through a symbolic link (nor from a FIFO or device)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RenderError(f"{path} is a symbolic link: crate-deploy neither reads nor "
                              "writes through one; remove it and render again") from None
        raise RenderError(f"cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise RenderError(f"{path} is not a regular file; remove it and render again")
        try:
            return handle.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RenderError(f"cannot read {path}: {exc}") from None


def _mode(path: Path) -> int:
    with contextlib.suppress(OSError):
        return path.stat().st_mode & 0o777
    return -1


# --- installing rendered files where systemd reads them (launch --systemd) --------------
#
# The same Ansible semantics as above, for files spread over absolute directories (the
# unit directory and the config directory), all below an optional --root. Paths in the
# install manifest are as systemd sees them, without the root prefix, so a tree built
# with --root stays right once booted.


@dataclass(frozen=True)
class InstallRecord:
    """What the last launch installed (path -> sha256) and the config hashes it started with."""

    files: dict[str, str]
    config: dict[str, str]


def read_install_record(root: Path, manifest: str) -> InstallRecord:
    """The install manifest at ROOT+manifest; empty when nothing was installed yet."""
    path = rooted(root, manifest)
    text = _read_installed_text(path)
    if text is None:
        return InstallRecord({}, {})
    try:
        document = json.loads(text)
        files = {str(key): str(value) for key, value in document["files"].items()}
        config = {str(key): str(value) for key, value in document["config"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LaunchError(f"{path} is damaged; remove it (and the files it listed) to "
                          "install afresh") from None
    return InstallRecord(files, config)


def plan_install(root: Path, record: InstallRecord, files: list[RenderedFile],
                 directories: tuple[str, ...]) -> list[FileChange]:
    """What installing `files` (absolute paths) below root would do, without doing it.

    A file listed in the record and no longer installed is removed, but only from
    `directories`: the manifest alone never makes us delete anything elsewhere.
    """
    changes = []
    for file in files:
        target = rooted(root, file.path)
        old = _read_installed_text(target)
        if old is not None and file.path not in record.files:
            raise LaunchError(f"{target} exists and was not installed by crate-deploy; it is "
                              "left as it is: move it away, or remove it, and launch again")
        status = "created" if old is None else ("unchanged" if old == file.content and
                                               _mode(target) == file.mode else "changed")
        changes.append(FileChange(file.path, status, old, file.content, file.mode))
    installed = {file.path for file in files}
    for path in sorted(set(record.files) - installed):
        if str(Path(path).parent) not in directories:
            raise LaunchError(f"the install manifest lists {path}, outside "
                              f"{' and '.join(directories)}; remove {rooted(root, path)} "
                              "by hand if it is ours, and the manifest with it")
        old = _read_installed_text(rooted(root, path))
        if old is not None:
            changes.append(FileChange(path, "removed", old, None))
    return changes


def apply_install(root: Path, manifest: str, changes: list[FileChange],
                  config: dict[str, str]) -> None:
    """Make the planned install: stage every file, rename them into place, then remove."""
    manifest_path = rooted(root, manifest)
    record = _install_manifest(changes, config)
    if (all(change.status == "unchanged" for change in changes)
            and _read_installed_text(manifest_path) == record.decode()):
        return  # nothing to do: leave even the manifest's mtime alone
    staged: list[tuple[Path, Path]] = []
    try:
        for change in changes:
            if change.status in ("created", "changed") and change.new is not None:
                target = rooted(root, change.path)
                staged.append((_stage(target, change.new.encode(), change.mode), target))
        staged.append((_stage(manifest_path, record, 0o644), manifest_path))
    except OSError as exc:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        raise LaunchError(f"cannot install into {exc.filename or root}: "
                          f"{exc.strerror or exc}") from None
    for temporary, target in staged:
        temporary.replace(target)
    for change in changes:
        if change.status == "removed":
            rooted(root, change.path).unlink(missing_ok=True)


def rooted(root: Path, path: str) -> Path:
    """An absolute path as seen from inside root (root "/" is this machine)."""
    if not path.startswith("/") or ".." in Path(path).parts:
        raise LaunchError(f"refusing to install at {path!r}: not a plain absolute path")
    return root / path.lstrip("/")


def _install_manifest(changes: list[FileChange], config: dict[str, str]) -> bytes:
    files = {change.path: hashlib.sha256(change.new.encode()).hexdigest()
             for change in changes if change.new is not None}
    document = {"files": files, "config": config}
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def _read_installed_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise LaunchError(f"cannot read {path}: {exc}") from None
