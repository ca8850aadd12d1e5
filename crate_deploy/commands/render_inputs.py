"""What a render depends on beyond the filesystem questions of crate_deploy/facts.py: a
digest of each kind, for the unchanged-render fast path (commands/unchanged.py).

Standard library only, and computed before anything else is imported or read: a file of
crate-deploy's that changes while a full render runs then differs from its record, so
the next render is full too.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator

from crate_deploy import template_dirs


class PackageLink(Exception):
    """A symbolic link among crate-deploy's own files: not walked, so never vouched for."""


def input_digests(site: str, directory: str, host: str | None, target: str) -> dict[str, str]:
    """A digest of each kind of input: crate-deploy's own files, the Python, the command,
    the working directory, the user, the environment render reads."""
    user = [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups())]
    parts = {
        "crate-deploy": _package_state(),
        "python": [sys.executable, sys.version, repr(sys.flags),
                   [_path_state(entry) for entry in sys.path]],
        "command": [site, directory, host, target],
        "working directory": os.getcwd(),
        "user": user,
        "environment": os.environ.get("PYDANTIC_DISABLE_PLUGINS"),
    }
    return {name: hashlib.sha256(json.dumps(value).encode()).hexdigest()
            for name, value in parts.items()}


def _path_state(entry: str) -> str:
    """A sys.path entry's mtime and inode: installing or upgrading a package there adds or
    renames its .dist-info directory, which changes both."""
    try:
        info = os.stat(entry or ".")
    except OSError as exc:
        return f"{entry}: {exc.errno}"
    return f"{entry}:{info.st_mtime_ns}:{info.st_ino}:{info.st_dev}"


def _package_state() -> str:
    """Every file of the crate_deploy package and of the templates the render uses:
    path, size, mtime, ctime (which no one can set back), inode."""
    import crate_deploy

    package = os.path.dirname(os.path.realpath(crate_deploy.__file__))
    templates = next((path for path in template_dirs() if os.path.isdir(path)), "")
    lines = [package, templates, *_tree(package)]
    if templates and not templates.startswith(package + os.sep):
        lines.extend(_tree(templates))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _tree(top: str) -> Iterator[str]:
    with os.scandir(top) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if entry.name == "__pycache__":
            continue
        if entry.is_symlink():
            # Followed by imports and by Jinja, but not walked here: never vouch for it.
            raise PackageLink(f"{entry.path} is a symbolic link")
        if entry.is_dir():
            yield from _tree(entry.path)
            continue
        info = entry.stat()
        yield (f"{entry.path}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:"
               f"{info.st_ino}:{info.st_dev}")
