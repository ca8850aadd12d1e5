"""Site file -> validated Site: load, check against the model, cross-check, resolve paths.

Errors from every stage are mapped back to `file:line:column: key.path: message`,
all of them at once, with a did-you-mean for misspelt keys.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from crate_deploy import facts
from crate_deploy.errors import Problem, SiteError
from crate_deploy.plan.compat import version_findings
from crate_deploy.site.checks import Finding, check_site
from crate_deploy.site.compat_keys import check_compatibility
from crate_deploy.site.fields import (
    CELERY_VERSION_PATTERN,
    FLOWER_VERSION_PATTERN,
    HOSTNAME_PATTERN,
    PATH_PATTERN,
    USER_PATTERN,
)
from crate_deploy.site.kubernetes import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    IMAGE_PATTERN,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    QUANTITY_PATTERN,
)
from crate_deploy.site.load import LoadedSite, Loc, load_site
from crate_deploy.site.model import Site
from crate_deploy.site.partial import Pruned, model_at, prune
from crate_deploy.site.references import check_references
from crate_deploy.site.sandbox import check_sandbox
from crate_deploy.target.versions import TargetVersions

_PATTERN_HINTS = {
    USER_PATTERN: "must be a system user or group name: lowercase letters, digits, '_' and "
                  "'-', starting with a letter or '_' (at most 31 characters)",
    CELERY_VERSION_PATTERN: "must be a Celery 5 version like \"5.2.7\" (quote it)",
    FLOWER_VERSION_PATTERN: "must be a Flower 2 version like \"2.0.1\" (quote it)",
    r"^[a-z][a-z0-9_-]{0,39}$": "must start with a lowercase letter and use only a-z, 0-9, "
                                "'_' and '-' (at most 40 characters)",
    r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$": "must start with a letter and use only letters, digits, "
                                       "'_', '.' and '-' (at most 100 characters)",
    HOSTNAME_PATTERN: "must be a host name: letters, digits and '-' in labels separated by "
                      "dots, no label starting or ending with '-' (at most 253 characters)",
    PATH_PATTERN: "must be a path of letters, digits and ._/@+,~- only (no spaces, quotes, "
                  "'%', '$' or line breaks)",
    r"^[A-Za-z_][A-Za-z0-9_]{0,99}$": "must be a variable name: letters, digits and '_', "
                                      "not starting with a digit",
    DNS_LABEL_PATTERN: "must be a Kubernetes name: lowercase letters, digits and '-', starting "
                       "and ending with a letter or digit (at most 63 characters)",
    DNS_SUBDOMAIN_PATTERN: "must be a Kubernetes name: lowercase letters, digits, '-' and '.', "
                           "starting and ending with a letter or digit",
    IMAGE_PATTERN: "must be an image reference with a tag or digest, like "
                   "registry.example.org/crate/celery:2.4.1",
    QUANTITY_PATTERN: "must be a Kubernetes quantity like \"500m\", \"2\", \"512Mi\" or "
                      "\"2Gi\" (quote it)",
    LABEL_KEY_PATTERN: "must be a label key: [prefix/]name, the name of letters, digits, '-', "
                       "'_' and '.', starting and ending with a letter or digit",
    LABEL_VALUE_PATTERN: "must be a label value: letters, digits, '-', '_' and '.', starting "
                         "and ending with a letter or digit (at most 63 characters)",
}


@dataclass(frozen=True)
class ValidatedSite:
    """A site that passed validation, with the warnings it raised and the loaded YAML
    (for file:line:col in later checks)."""

    site: Site
    source: Path
    warnings: list[Problem]
    loaded: LoadedSite


def check_versions(validated: ValidatedSite, versions: TargetVersions) -> list[Problem]:
    """Refuse features the target's Celery or Flower is too old for, at their keys; return
    the warnings about what the target needs of the site."""
    findings = version_findings(validated.site, versions)
    errors = [validated.loaded.problem(loc, message)
              for loc, message, severity in findings if severity == "error"]
    if errors:
        raise SiteError(errors)
    return [validated.loaded.problem(loc, message, severity)
            for loc, message, severity in findings if severity != "error"]


def check_target(validated: ValidatedSite, target: str) -> None:
    """Refuse what the output target cannot render (Kubernetes: the section, its names)."""
    if target != "kubernetes":
        return
    from crate_deploy.site.kubernetes_checks import target_findings

    problems = [validated.loaded.problem(loc, message) for loc, message, _ in
                target_findings(validated.site)]
    if problems:
        raise SiteError(sorted(problems, key=lambda p: (p.line, p.column)))


def validate_file(path: Path) -> ValidatedSite:
    """Load and fully validate a site file; raises SiteError listing every problem.

    Field errors and cross-checks are reported together: the cross-checks run on what
    did validate (partial.py), so one run shows everything that can be known."""
    loaded = load_site(path)
    warnings = check_compatibility(loaded)  # `requires`, then renamed keys
    errors: list[Problem] = []
    pruned: Pruned | None
    try:
        pruned = Pruned(Site.model_validate(loaded.data))
    except ValidationError as exc:
        errors, pruned = _model_problems(loaded, exc), prune(loaded.data, _error_loc)
    site = None
    if pruned is not None:
        site, path_problems = _resolve_paths(pruned.site, loaded, path.parent)
        errors.extend(path_problems)
        for loc, message, severity in pruned.findings(_findings(site, pruned)):
            (errors if severity == "error" else warnings).append(
                loaded.problem(loc, message, severity))
    if errors or site is None:
        raise SiteError(sorted(errors, key=lambda p: (p.line, p.column)) + warnings)
    return ValidatedSite(site, path, warnings, loaded)


def _findings(site: Site, pruned: Pruned) -> list[Finding]:
    """Every cross-check: within the site, its secrets file, and the units' sandbox."""
    return [*check_site(site, skip=pruned.skipped_rules()), *check_references(site),
            *check_sandbox(site)]


def _model_problems(loaded: LoadedSite, exc: ValidationError) -> list[Problem]:
    """pydantic's errors, one per place in the file."""
    by_place: dict[Loc, list[ErrorDetails]] = {}
    for error in exc.errors(include_url=False):
        by_place.setdefault(_error_loc(error, loaded.data), []).append(error)
    return [loaded.problem(loc, _place_message(errors, loc)) for loc, errors in by_place.items()]


def _error_loc(error: ErrorDetails, data: Any) -> Loc:
    return _data_loc(error["loc"], data, error["type"] == "missing")


def _data_loc(loc: tuple[int | str, ...], data: Any, missing: bool) -> Loc:
    """Keep the steps of an error path that exist in the data; the others are pydantic's
    own (union members, validator names), whatever they are called. A required key that
    is missing is the one step kept that the data lacks."""
    kept: list[int | str] = []
    for index, part in enumerate(loc):
        if _has_step(data, part):
            data = data[part]
        elif missing and isinstance(data, dict) and index == len(loc) - 1:
            data = None
        else:
            continue
        kept.append(part)
    return tuple(kept)


def _has_step(data: Any, part: int | str) -> bool:
    if isinstance(data, dict):
        return part in data
    return isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)


_TYPE_NAMES = {"string_type": "text", "int_type": "a whole number", "float_type": "a number",
               "bool_type": "true/false", "none_required": "null", "list_type": "a list",
               "dict_type": "a mapping", "model_type": "a mapping"}


def _place_message(errors: list[ErrorDetails], loc: Loc) -> str:
    """One message per place: a value that fits no member of a union gets one line."""
    if len(errors) > 1 and all(error["type"] in _TYPE_NAMES for error in errors):
        names = list(dict.fromkeys(_TYPE_NAMES[error["type"]] for error in errors))
        return f"has the wrong type: must be {', '.join(names[:-1])} or {names[-1]}"
    return _message(errors[0], loc)


def _message(error: ErrorDetails, loc: Loc) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return "is required"
    if kind == "string_pattern_mismatch":
        return _PATTERN_HINTS.get(str(ctx.get("pattern")), "contains characters that are not "
                                  "allowed here (line breaks, quotes, '%', '$' ...)")
    simple = {
        "greater_than_equal": "must be >= {ge}", "greater_than": "must be > {gt}",
        "less_than_equal": "must be <= {le}", "less_than": "must be < {lt}",
        "int_type": "must be a whole number", "float_type": "must be a number",
        "string_type": "must be text (quote it if YAML read it as something else)",
        "bool_type": "must be true or false", "list_type": "must be a list",
        "dict_type": "must be a mapping of keys to values",
        "model_type": "must be a mapping of keys to values",
        "too_short": "must have at least {min_length} item(s)",
        "too_long": "must have at most {max_length} item(s)",
        "string_too_long": "must be at most {max_length} characters",
        "literal_error": "must be one of: {expected}",
        "finite_number": "must be a finite number",
    }
    if kind in simple:
        return simple[kind].format(**ctx)
    return str(error["msg"]).removeprefix("Value error, ")


def _unknown_key(loc: Loc) -> str:
    key = str(loc[-1])
    model = model_at(Site, loc[:-1])
    allowed = list(model.model_fields) if model else []
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    return f"unknown key {key!r}; allowed here: {', '.join(allowed)}"


def _resolve_paths(site: Site, loaded: LoadedSite, base: Path) -> tuple[Site, list[Problem]]:
    """Make relative paths absolute against the site file's folder (units need absolute)."""
    problems: list[Problem] = []

    def absolute(loc: Loc, value: str | None) -> str | None:
        if value is None or value.startswith("/"):
            return value
        resolved = facts.resolve(str(PurePosixPath(facts.resolve(base), value)))
        if re.fullmatch(PATH_PATTERN, resolved) is None:
            problems.append(loaded.problem(loc, f"resolves to {resolved!r}, which is not a "
                                           "plain path; give an absolute path"))
        return resolved

    top = {key: absolute((key,), getattr(site, key))
           for key in ("venv", "celery", "working_directory", "secrets_file")}
    paths = site.paths.model_copy(update={
        key: absolute(("paths", key), getattr(site.paths, key))
        for key in ("config_dir", "state_dir")})
    return site.model_copy(update={**top, "paths": paths}), problems
