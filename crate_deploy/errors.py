"""One error hierarchy; the CLI's single handler turns these into messages and exit codes.

Exit codes: 2 = the input (site file, arguments) is wrong; 1 = the operation failed
(a render refused to overwrite a foreign file, a launch or status found something down).
"""

from __future__ import annotations

from dataclasses import dataclass


class CrateDeployError(Exception):
    """Base of every error crate-deploy reports to the user (never with a traceback)."""

    exit_code = 1


class UsageError(CrateDeployError):
    """The command was given something it cannot use (a missing directory, a bad option)."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a site file, located as precisely as we can."""

    file: str
    line: int
    column: int
    path: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        key = f" {self.path}:" if self.path else ""
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}:{key} {prefix}{self.message}"


class SiteError(CrateDeployError):
    """The site file is invalid; carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class RenderError(CrateDeployError):
    """Rendering or writing the output failed; nothing was changed on disk."""


class LaunchError(CrateDeployError):
    """Starting, watching or stopping the fleet failed."""
