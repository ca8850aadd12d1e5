"""The stamp of a celery program: what a probe of its versions depends on.

A probe of the target's Celery, kombu and Flower versions is cached in deployment.json
and reused while the stamp is the same. It covers the program's directory and what is
installed beside it: the distributions (name-version.dist-info) in its venv's
site-packages. `pip install flower` adds a distribution but changes nothing in bin/,
so the directory alone would miss it. Standard library only: the unchanged-render fast
path computes it too, without the models.
"""

from __future__ import annotations

import contextlib
import hashlib
import os


def stamp(executable: str) -> str:
    """`executable` (as the site gives it) and a digest of its venv's state."""
    bin_dir = os.path.dirname(os.path.realpath(executable))
    state = [f"{bin_dir}:{os.stat(bin_dir).st_mtime_ns}"]
    for packages in _site_packages(os.path.dirname(bin_dir)):
        with contextlib.suppress(OSError):
            state.append(f"{packages}:{os.stat(packages).st_mtime_ns}")
            state.extend(sorted(name for name in os.listdir(packages)
                                if name.endswith((".dist-info", ".egg-info"))))
    digest = hashlib.sha256("\n".join(state).encode()).hexdigest()[:16]
    return f"{executable}:{digest}"


def _site_packages(prefix: str) -> list[str]:
    """PREFIX/lib/python3*/site-packages that exist, in name order."""
    lib = os.path.join(prefix, "lib")
    try:
        with os.scandir(lib) as entries:
            versions = sorted(entry.name for entry in entries
                              if entry.name.startswith("python3") and _is_dir(entry))
    except OSError:
        return []
    found = [os.path.join(lib, version, "site-packages") for version in versions]
    return [path for path in found if os.path.lexists(path) and _exists(path)]


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _exists(path: str) -> bool:
    try:
        os.stat(path)
    except (OSError, ValueError):
        return False
    return True
