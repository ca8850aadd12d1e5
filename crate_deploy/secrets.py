"""Keep secrets out of everything crate-deploy prints: diffs, status, logs, errors."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "****"
# scheme://user:password@host -> scheme://user:****@host (references stay visible).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?=@)")
# NAME_PASSWORD=value, NAME_SECRET=value ... as in env files and command lines.
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<head>\b[A-Za-z0-9_]*(?:PASSWORD|PASSWD|SECRET|TOKEN|APIKEY|API_KEY)[A-Za-z0-9_]*=)"
    r"(?P<pw>[^\s'\"]+|'[^']*'|\"[^\"]*\")", re.IGNORECASE)
_REFERENCE = re.compile(r"^['\"]?\$\{[A-Za-z_][A-Za-z0-9_]*\}['\"]?$")


class Masker:
    """Masks URL passwords, secret-looking assignments, and every known secret value."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.known = sorted({value for value in known if len(value) >= 4}, key=len,
                            reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.known:
            text = text.replace(value, MASK)
        text = _URL_PASSWORD.sub(self._keep_references, text)
        return _SECRET_ASSIGNMENT.sub(self._keep_references, text)

    @staticmethod
    def _keep_references(match: re.Match[str]) -> str:
        password = match.group("pw")
        if _REFERENCE.match(password) or password == MASK:
            return match.group(0)
        return match.group("head") + MASK


mask = Masker()
