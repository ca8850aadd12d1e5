"""`crate-deploy migrate SITE`: rewrite deprecated key names in a site file, in place.

The file is someone's reviewed text, so everything but the renamed keys must survive:
comments, key order, quoting, blank lines. ruamel.yaml's round-trip mode keeps those,
given the file's own indentation, which is found by trying the usual layouts until
one reproduces the file byte for byte. The result is then checked to differ from the
original only in the renamed keys; a file whose layout cannot be reproduced is left
alone, with the keys to rename by hand. The new text replaces the file atomically,
with the file's mode and owner.
"""

from __future__ import annotations

import difflib
import io
import os
from pathlib import Path
from typing import Any

import click
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from crate_deploy.errors import CrateDeployError, UsageError
from crate_deploy.site import compat_keys
from crate_deploy.site.load import parse_site
from crate_deploy.write import write_file_atomically

# (mapping indent, sequence indent, dash offset): "- " under its key, flush with it, ...
_LAYOUTS = [(2, 4, 2), (2, 2, 0), (4, 4, 2), (4, 6, 4), (4, 4, 0), (2, 3, 1), (3, 3, 0)]


class MigrateError(CrateDeployError):
    """The site file cannot be rewritten without changing more than its keys."""


def migrate_command(site_path: Path, *, check: bool) -> int:
    raw = _read(site_path)
    loaded = parse_site(raw, str(site_path))  # refuses what validate refuses to load
    renames = compat_keys.check_compatibility(loaded)  # and an unmet `requires`
    if not renames:
        click.echo(f"{site_path}: nothing to migrate")
        return 0
    text = raw.decode("utf-8")
    new_text = rewrite_deprecated_keys(text)
    if new_text is None:
        for problem in renames:
            click.echo(str(problem), err=True)
        raise MigrateError(f"{site_path} is laid out in a way this tool cannot write back "
                           "unchanged (indentation, spacing): rename the key(s) above by "
                           "hand; nothing was written")
    click.echo("".join(difflib.unified_diff(text.splitlines(keepends=True),
                                            new_text.splitlines(keepends=True),
                                            f"a/{site_path.name}", f"b/{site_path.name}")),
               nl=False)
    if check:
        click.echo(f"check: {len(renames)} key(s) would be renamed; nothing written")
        return 1
    status = site_path.stat()
    write_file_atomically(site_path, new_text, status.st_mode & 0o777)
    if os.geteuid() == 0 and (status.st_uid, status.st_gid) != (0, 0):
        os.chown(site_path, status.st_uid, status.st_gid)
    click.echo(f"{site_path}: renamed {len(renames)} key(s); comments and order kept")
    return 0


def rewrite_deprecated_keys(text: str) -> str | None:
    """The text with every deprecated key renamed and nothing else changed; None when
    the file's layout cannot be written back unchanged."""
    yaml = _round_trip(text)
    if yaml is None:
        return None
    data = yaml.load(text)
    pairs = set()
    for renamed in compat_keys.DEPRECATED_KEYS:
        for mapping, _ in compat_keys.mappings_at(data, renamed.parent, ()):
            if isinstance(mapping, CommentedMap) and renamed.key in mapping:
                _rename(mapping, renamed.key, renamed.new)
                pairs.add((renamed.key, renamed.new))
    out = io.StringIO()
    yaml.dump(data, out)
    new_text = out.getvalue()
    return new_text if _only_keys_renamed(text, new_text, pairs) else None


def _round_trip(text: str) -> YAML | None:
    """A round-trip YAML that writes this file back exactly as it is."""
    for mapping, sequence, offset in _LAYOUTS:
        yaml = YAML(typ="rt")
        yaml.preserve_quotes = True
        yaml.width = 1_000_000  # never re-wrap a long line
        yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
        try:
            out = io.StringIO()
            yaml.dump(yaml.load(text), out)
        except YAMLError:
            break
        if out.getvalue() == text:
            return yaml
    return None


def _rename(mapping: CommentedMap, old: str, new: str) -> None:
    """Rename a key where it stands, with the comment at the end of its line; that
    comment keeps its distance from the value (ruamel keeps its column otherwise)."""
    position = list(mapping).index(old)
    value = mapping.pop(old)
    comment: Any = mapping.ca.items.pop(old, None)
    mapping.insert(position, new, value)
    if comment is not None:
        for token in comment:
            if token is not None and hasattr(token, "column"):
                token.column = max(0, token.column + len(new) - len(old))
        mapping.ca.items[new] = comment


def _only_keys_renamed(old: str, new: str, pairs: set[tuple[str, str]]) -> bool:
    before, after = old.splitlines(), new.splitlines()
    if len(before) != len(after):
        return False
    return all(a == b or any(a.replace(key, name, 1) == b for key, name in pairs)
               for a, b in zip(before, after, strict=True))


def _read(path: Path) -> bytes:
    if path.is_symlink():
        raise UsageError(f"{path} is a symbolic link: migrate the file it points to")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
