"""`validate A.yaml B.yaml ...`: every file checked, every problem of every file reported.

A pre-commit hook passes all the staged site files in one call; one invalid file
must not hide the problems of the next, so each file's SiteError is collected and
raised as one (the CLI's handler prints them and exits 2).
"""

from __future__ import annotations

from pathlib import Path

from crate_deploy.commands.render import validate_command
from crate_deploy.errors import Problem, SiteError


def validate_sites(sites: list[Path]) -> int:
    """`validate [SITE ...]`: site.yaml when none is given, one site, or every site file a
    pre-commit hook passes at once."""
    if not sites:
        return validate_command(Path("site.yaml"))
    if len(sites) == 1:
        return validate_command(sites[0])
    return validate_files_command(sites)


def validate_files_command(sites: list[Path]) -> int:
    problems: list[Problem] = []
    for site in sites:
        try:
            validate_command(site)
        except SiteError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SiteError(problems)
    return 0
