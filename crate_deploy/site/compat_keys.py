"""Forward and backward compatibility of site files: `requires`, and renamed keys.

Both run on the loaded data, before the model sees it:

- `requires` (a PEP 440 specifier such as ">=0.3") is checked first. A site written
  for a newer crate-deploy than this one is refused with that one message, rather
  than with "unknown key; did you mean" for each key this version has never heard of.
- A key listed in DEPRECATED_KEYS is accepted under its old spelling for at least one
  release (as pre-commit does with its config): it is moved to its new name, with a
  warning at the old key's line and column naming the new spelling, and
  `crate-deploy migrate` rewrites the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crate_deploy import __version__
from crate_deploy.errors import Problem, SiteError
from crate_deploy.site.load import LoadedSite, Loc, format_loc

if TYPE_CHECKING:
    from packaging.specifiers import Specifier, SpecifierSet
    from packaging.version import Version

REQUIRES_KEY = "requires"


@dataclass(frozen=True)
class Renamed:
    """A key's old spelling: `old` is its path ("workers[].old_name"), `new` its new name."""

    old: str
    new: str
    since: str

    @property
    def parent(self) -> tuple[str | None, ...]:
        """The path to the mapping holding the key; None stands for "every list item"."""
        parts: list[str | None] = []
        for name in self.old.split(".")[:-1]:
            parts.append(name.removesuffix("[]"))
            if name.endswith("[]"):
                parts.append(None)
        return tuple(parts)

    @property
    def key(self) -> str:
        return self.old.rsplit(".", 1)[-1]

    @property
    def new_path(self) -> str:
        return re.sub(r"[^.]+$", self.new, self.old)


# Old spellings still accepted, oldest first. No key has been renamed yet: the first
# rename adds a line here, e.g. Renamed("systemd.restart_sec", "restart_delay", "0.2").
DEPRECATED_KEYS: tuple[Renamed, ...] = ()


def check_compatibility(loaded: LoadedSite) -> list[Problem]:
    """Refuse a site this crate-deploy is too old (or too new) for; move renamed keys.

    Returns the deprecation warnings; raises SiteError when `requires` is not met
    (with that one problem) or when a key is given under both its old and new names.
    """
    _check_requires(loaded)
    warnings, errors = [], []
    for renamed in DEPRECATED_KEYS:
        for mapping, loc in mappings_at(loaded.data, renamed.parent, ()):
            if renamed.key not in mapping:
                continue
            old_loc = (*loc, renamed.key)
            if renamed.new in mapping:
                errors.append(loaded.problem(old_loc, f"is the old name of {renamed.new!r}, "
                                             "which is given too: keep only "
                                             f"{renamed.new!r}"))
                continue
            warnings.append(loaded.problem(old_loc, _deprecation(renamed, loc), "warning"))
            _rename(loaded, mapping, loc, renamed.key, renamed.new)
    if errors:
        raise SiteError(errors)
    return sorted(warnings, key=lambda problem: (problem.line, problem.column))


def deprecated_key_rows() -> list[str]:
    """The reference's list of deprecated spellings (Markdown)."""
    if not DEPRECATED_KEYS:
        return ["No key is deprecated in this release: every spelling above is current."]
    rows = ["| deprecated key | write instead | renamed in |", "| --- | --- | --- |"]
    rows.extend(f"| `{renamed.old}` | `{renamed.new_path}` | {renamed.since} |"
                for renamed in DEPRECATED_KEYS)
    return rows


def with_deprecated_keys(schema: dict[str, Any]) -> dict[str, Any]:
    """The site's JSON Schema with each old spelling accepted and marked deprecated, so
    an editor flags it as such rather than as an unknown key."""
    for renamed in DEPRECATED_KEYS:
        properties = _schema_object(schema, schema, renamed.parent).get("properties", {})
        if renamed.new in properties:
            message = f"Deprecated: renamed to {renamed.new} in crate-deploy {renamed.since}."
            properties[renamed.key] = {**properties[renamed.new], "deprecated": True,
                                       "description": message, "deprecationMessage": message}
    return schema


def _schema_object(schema: dict[str, Any], node: dict[str, Any],
                   path: tuple[str | None, ...]) -> dict[str, Any]:
    """The object schema at `path` (None: a list's items), through $refs and nullables."""
    while "$ref" in node or "anyOf" in node:
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        else:
            node = next((member for member in node["anyOf"] if member.get("type") != "null"),
                        {})
    if not path:
        return node
    step = node.get("items", {}) if path[0] is None else node.get("properties", {}).get(
        path[0], {})
    return _schema_object(schema, step, path[1:])


def _deprecation(renamed: Renamed, loc: Loc) -> str:
    new_path = format_loc((*loc, renamed.new))
    return (f"deprecated: renamed to {renamed.new!r} in crate-deploy {renamed.since}; write "
            f"{new_path} (`crate-deploy migrate` rewrites the file)")


def _check_requires(loaded: LoadedSite) -> None:
    if not isinstance(loaded.data, dict) or REQUIRES_KEY not in loaded.data:
        return
    # Imported here: a site without `requires` (most) needs no packaging (a few ms a render).
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import Version

    value = loaded.data[REQUIRES_KEY]
    loc = (REQUIRES_KEY,)
    try:
        if not isinstance(value, str):
            raise InvalidSpecifier(str(value))
        specifiers = SpecifierSet(value)
    except InvalidSpecifier:
        raise SiteError([loaded.problem(loc, "must be a quoted version specifier naming the "
                                        "oldest crate-deploy the site needs, like \">=0.3\"")]
                        ) from None
    current = Version(__version__)
    if specifiers.contains(current, prereleases=True):
        return
    raise SiteError([loaded.problem(loc, _unmet(specifiers, current))])


def _unmet(specifiers: SpecifierSet, current: Version) -> str:
    """"this site needs crate-deploy 0.3 or later", or the specifier when it is not that."""
    failed = [spec for spec in specifiers if not spec.contains(current, prereleases=True)]
    lower = [spec for spec in failed if spec.operator in (">=", "~=", ">")]
    if lower and len(lower) == len(failed):
        from packaging.version import Version

        newest = max(lower, key=lambda spec: Version(spec.version))
        need = _lower_bound(newest)
        return (f"this site needs crate-deploy {need} (this is {current}): upgrade "
                "crate-deploy before using this site file")
    return (f"this site needs crate-deploy {specifiers} (this is {current}): use a "
            "crate-deploy that matches")


def _lower_bound(spec: Specifier) -> str:
    if spec.operator == ">":
        return f"later than {spec.version}"
    return f"{spec.version} or later"


def mappings_at(data: Any, path: tuple[str | None, ...],
                 loc: Loc) -> list[tuple[dict[str, Any], Loc]]:
    """Every mapping at `path` in the data (None steps into every list item), with its loc."""
    if not path:
        return [(data, loc)] if isinstance(data, dict) else []
    step, rest = path[0], path[1:]
    if step is None:
        if not isinstance(data, list):
            return []
        return [found for index, item in enumerate(data)
                for found in mappings_at(item, rest, (*loc, index))]
    if not isinstance(data, dict) or step not in data:
        return []
    return mappings_at(data[step], rest, (*loc, step))


def _rename(loaded: LoadedSite, mapping: dict[str, Any], loc: Loc, old: str, new: str) -> None:
    """Rename a key in place, keeping its place in the mapping and its marks."""
    items = list(mapping.items())
    mapping.clear()
    mapping.update((new if key == old else key, value) for key, value in items)
    old_loc, new_loc = (*loc, old), (*loc, new)
    for mark_loc in [mark_loc for mark_loc in loaded.marks if mark_loc[:len(old_loc)] == old_loc]:
        loaded.marks[(*new_loc, *mark_loc[len(old_loc):])] = loaded.marks.pop(mark_loc)
