"""Paths the rendered units' sandbox hides from the services they run.

A system unit with hardening has ProtectHome=yes (/home, /root and /run/user are empty
and inaccessible) and PrivateTmp=yes (a private, empty /tmp and /var/tmp); with no
`user:` it runs as a DynamicUser=, which implies PrivateTmp= too and owns nothing
outside its StateDirectory=. A working directory, venv or state directory in such a
place passes every syntax check and fails only when systemd starts the unit (200/CHDIR,
203/EXEC, a beat that cannot write its schedule).

All are warnings, not errors: the same rendered files also run in the foreground
(`crate-deploy launch`, the demo, the end-to-end tests), where no sandbox hides anything,
and validate cannot know which launch a site is for. Each says what `launch --systemd`
would meet and the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath

from crate_deploy import facts
from crate_deploy.site.load import Loc
from crate_deploy.site.model import Site

Finding = tuple[Loc, str, str]

PATH_KEYS: tuple[Loc, ...] = (("working_directory",), ("venv",), ("celery",),
                              ("paths", "state_dir"), ("paths", "config_dir"))
HOME_DIRS = ("/home", "/root", "/run/user")
TMP_DIRS = ("/tmp", "/var/tmp")  # noqa: S108 - names we look for, not files we make
_WHAT: dict[Loc, str] = {("working_directory",): "start in it (200/CHDIR)",
         ("venv",): "run its celery (203/EXEC)", ("celery",): "run it (203/EXEC)",
         ("paths", "state_dir"): "keep beat's schedule and Flower's database there",
         ("paths", "config_dir"): "read their config there"}


def check_sandbox(site: Site) -> Iterator[Finding]:
    if site.systemd.scope != "system":
        return
    dynamic = site.user is None
    for loc in PATH_KEYS:
        path = _value(site, loc)
        hidden = None if path is None else hidden_by_sandbox(site, path)
        if hidden is not None:
            why, fix = hidden
            yield loc, (f"{path} is under {why}, so under systemd the services cannot "
                        f"{_WHAT[loc]}: {fix}"), "warning"
    if dynamic and site.paths.state_dir and _uses_state(site):
        yield ("paths", "state_dir"), (
            "with no user: the services run as a DynamicUser= that does not own "
            f"{site.paths.state_dir}, so beat and Flower cannot write there: remove "
            f"paths.state_dir (systemd then makes /var/lib/{site.project} for it) or set user:"
        ), "warning"
    yield from _interpreter(site)


def hidden_by_sandbox(site: Site, path: str) -> tuple[str, str] | None:
    """(how the site's system units hide `path`, the fix), or None."""
    if site.systemd.scope != "system":
        return None
    return _hidden(path, site.systemd.hardening, site.user is None)


def _hidden(path: str, hardening: bool, dynamic: bool) -> tuple[str, str] | None:
    """(how the units hide `path`, the fix), or None when they do not."""
    top = _under(path, HOME_DIRS)
    if top and hardening:
        return (f"{top}, which the units hide (ProtectHome=yes)",
                "move it (to /srv or /opt), or set systemd.hardening: false")
    top = _under(path, TMP_DIRS)
    if top and (hardening or dynamic):
        cause = "PrivateTmp=yes" if hardening else "PrivateTmp=, implied by DynamicUser="
        return (f"{top}, which each service sees as its own empty directory ({cause})",
                f"move it out of {top}")
    return None


def _interpreter(site: Site) -> Iterator[Finding]:
    """The venv's python links to a base interpreter; pyenv puts that under /root or /home."""
    if site.venv is None or not site.systemd.hardening:
        return
    python = facts.realpath(f"{site.venv}/bin/python")
    top = _under(python, HOME_DIRS)
    if top and facts.exists(python):
        yield ("venv",), (f"this venv's python is {python}, under {top}, which the units hide "
                          "(ProtectHome=yes): under systemd its celery cannot start (203/EXEC); "
                          f"make the venv from a python outside {top} (/usr/bin/python3)"), (
                          "warning")


def _uses_state(site: Site) -> bool:
    return site.beat.enabled or (site.flower.enabled and site.flower.persistent)


def _value(site: Site, loc: Loc) -> str | None:
    value = getattr(site.paths, str(loc[1])) if loc[0] == "paths" else getattr(site, str(loc[0]))
    return value if isinstance(value, str) else None


def _under(path: str, tops: tuple[str, ...]) -> str | None:
    pure = PurePosixPath(path)
    for top in tops:
        if pure == PurePosixPath(top) or PurePosixPath(top) in pure.parents:
            return top
    return None
