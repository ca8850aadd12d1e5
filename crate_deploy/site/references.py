"""Every ${NAME} the site refers to must be defined in its secrets file, when we can read it.

A misspelt reference is otherwise found only when the fleet starts, by every process at
once and with no line number. Only the file's names are read into the messages, never a
value. The file may rightly be unreadable here (root-only) or absent (rendered for another
server): that is a warning that the references went unchecked, or nothing, not an error.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from pathlib import Path

from crate_deploy import facts
from crate_deploy.site.fields import SECRET_REFERENCE
from crate_deploy.site.load import Loc
from crate_deploy.site.model import Site
from crate_deploy.systemd.units import UnitError, parse_environment_file

Finding = tuple[Loc, str, str]


def references(site: Site) -> Iterator[tuple[Loc, str]]:
    """(where, NAME) for every ${NAME} in the site."""
    texts: list[tuple[Loc, str]] = [(("broker", "urls", index), url)
                                    for index, url in enumerate(site.broker.urls)]
    if site.results.backend:
        texts.append((("results", "backend"), site.results.backend))
    texts.extend((("flower", "auth", index, "password"), user.password)
                 for index, user in enumerate(site.flower.auth))
    for loc, text in texts:
        for name in SECRET_REFERENCE.findall(text):
            yield loc, name


def check_references(site: Site) -> Iterator[Finding]:
    found = list(references(site))
    if not found or site.secrets_file is None:
        return  # checks.py asks for a secrets_file when there are references
    path = Path(site.secrets_file)
    try:
        text = facts.read_bytes(path).decode("utf-8")
        defined = parse_environment_file(text, str(path))
    except FileNotFoundError:
        # Rendered for another server (its celery is not here either): nothing to say.
        if facts.exists(site.celery_executable):
            yield (("secrets_file",), f"{path} does not exist: the services cannot start "
                   "without it (KEY=value lines, mode 0600)", "warning")
        return
    except OSError as exc:
        yield (("secrets_file",), f"{path} cannot be read by this user ({exc.strerror}), so "
               "the ${...} references were not checked: run validate as a user who can read "
               "it (root) to check them", "warning")
        return
    except (UnitError, UnicodeDecodeError) as exc:
        # Only the line number: the parser's message quotes the line, secret and all.
        line = re.search(r":(\d+):", str(exc))
        where = f" at line {line.group(1)}" if line else ""
        yield (("secrets_file",), f"{path} is malformed{where}: write KEY=value lines "
               "(the services could not start)", "error")
        return
    for loc, name in found:
        if name not in defined:
            yield loc, _undefined(name, path, sorted(defined)), "error"


def _undefined(name: str, path: Path, defined: list[str]) -> str:
    message = f"${{{name}}} is not defined in the secrets file {path}"
    close = difflib.get_close_matches(name, defined, n=1, cutoff=0.6)
    if close:
        return f"{message}; did you mean {close[0]}?"
    if defined:
        return f"{message} (it defines: {', '.join(defined)})"
    return f"{message}, which defines nothing: add {name}=... to it"
