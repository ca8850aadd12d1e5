"""When the model refuses some values, cross-check the rest anyway.

pydantic gives no Site while one field is wrong, so the cross-checks in checks.py would
wait for the user to fix every field error first, one run at a time. Instead we take
the refused values out of a copy of the data (a key that has a default falls back to
it; anything else takes its enclosing list item with it) and validate again, until the
rest is a Site. The cross-checks then run on what did validate. Whatever was taken out
is "tainted": a finding at it, or inside or around it, would be about a value that is
not the one in the file, so it is dropped.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from crate_deploy.site.load import Loc, format_loc
from crate_deploy.site.model import Site

Finding = tuple[Loc, str, str]
MAX_ROUNDS = 20  # each round takes out at least one value; a cascade is rarely deeper than 3

# Rules of checks.py that read a whole collection: a value taken out of it changes their
# answer ("queue 'x' is not declared" when queue x was only refused for its type).
_COLLECTION_RULES = {
    "queue references": (("queues",),),
    "unused queues": (("queues",), ("workers",), ("default_queue",)),
    "executable": (("venv",), ("celery",)),
    "hosts": (("hosts",), ("workers",), ("queues",), ("routes",), ("default_queue",),
              ("beat",), ("flower",)),
}


# Required keys with nothing around them to take out instead: a stand-in lets the rest
# be checked (the keys are tainted, so nothing is said about the stand-in itself).
_STAND_INS: dict[Loc, Any] = {("project",): "project", ("app",): "app",
                              ("broker", "urls"): ["amqp://127.0.0.1//"]}


@dataclass
class Pruned:
    """A Site built from what validated, and how its numbering maps back to the file."""

    site: Site
    tainted: set[Loc] = field(default_factory=set)
    kept: dict[Loc, list[int]] = field(default_factory=dict)  # list -> original indices

    def original(self, loc: Loc) -> Loc:
        """A loc in the pruned data, numbered as in the file."""
        return _renumbered(self.kept, loc)

    def skipped_rules(self) -> set[str]:
        return {rule for rule, reads in _COLLECTION_RULES.items()
                if any(loc[:len(base)] == base for loc in self.tainted for base in reads)}

    def findings(self, found: Iterable[Finding]) -> list[Finding]:
        """Findings renumbered as in the file, without those a taken-out value touches."""
        kept = []
        for loc, message, severity in found:
            loc = self.original(loc)
            if not any(_related(loc, tainted) for tainted in self.tainted):
                kept.append((loc, self._renumber(message), severity))
        return kept

    def _renumber(self, message: str) -> str:
        """Keys quoted in a message ("already used by queues[0]") numbered as in the file."""
        if not self.kept:
            return message

        def original(match: re.Match[str]) -> str:
            parts: list[int | str] = []
            for name, index in re.findall(r"([a-z_]+)|\[(\d+)\]", match.group(0)):
                parts.append(name if name else int(index))
            return format_loc(self.original(tuple(parts)))

        return re.sub(r"[a-z_]+(?:\[\d+\]|\.[a-z_]+)*\[\d+\](?:\[\d+\]|\.[a-z_]+)*",
                      original, message)


def prune(data: Any, data_loc: Callable[[Any, Any], Loc]) -> Pruned | None:
    """Take refused values out of a copy of `data` until it validates; None if it never
    does (a required top-level key is missing or wrong: nothing to cross-check).

    `data_loc(error, data)` maps a pydantic error to the loc of the value in `data`."""
    data = copy.deepcopy(data)
    taker = _Taker(data)
    for _ in range(MAX_ROUNDS):
        try:
            site = Site.model_validate(data)
        except ValidationError as exc:
            locs = [data_loc(error, data) for error in exc.errors(include_url=False)]
            if not taker.take_out(locs):
                return None
            continue
        return Pruned(site, taker.tainted, taker.kept)
    return None


class _Taker:
    """Takes values out of the data, remembering what it took and how lists renumbered."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.tainted: set[Loc] = set()
        self.kept: dict[Loc, list[int]] = {}

    def take_out(self, locs: list[Loc]) -> bool:
        items: set[Loc] = set()
        changed = False
        for loc in locs:
            target = self._removable(loc)
            if target is None:
                continue
            parent = _walk(self.data, target[:-1])
            if isinstance(target[-1], int):
                items.add(target)
            elif target in _STAND_INS and parent.get(target[-1]) != _STAND_INS[target]:
                parent[target[-1]] = copy.deepcopy(_STAND_INS[target])
                self.tainted.add(target)
                changed = True
            elif isinstance(parent, dict) and target[-1] in parent:
                del parent[target[-1]]
                self.tainted.add(self._original(target))
                changed = True
        # Deepest first, and from the end of each list, so no removal shifts another's index.
        for item in sorted(items, key=lambda loc: (len(loc), _sortable(loc)), reverse=True):
            self._remove_item(item)
            changed = True
        return changed

    def _removable(self, loc: Loc) -> Loc | None:
        """The value to take out for an error at loc: the key itself when it has a default
        or is a mapping entry, else the nearest enclosing list item."""
        for end in range(len(loc), 0, -1):
            here = loc[:end]
            parent = _walk(self.data, here[:-1])
            if isinstance(here[-1], int):
                if isinstance(parent, list) and here[-1] < len(parent):
                    return here
                continue
            if here in _STAND_INS and isinstance(parent, dict):
                return here
            if not isinstance(parent, dict) or here[-1] not in parent:
                continue  # a required key that is missing: its container must go
            model = model_at(Site, self._original(here[:-1]))
            info = model.model_fields.get(str(here[-1])) if model else None
            if info is None or not info.is_required():  # a mapping's entry, an unknown key
                return here
        return None

    def _remove_item(self, item: Loc) -> None:
        parent = _walk(self.data, item[:-1])
        index = item[-1]
        assert isinstance(parent, list) and isinstance(index, int)
        self.tainted.add(self._original(item))
        original_list = self._original(item[:-1])
        indices = self.kept.setdefault(original_list, list(range(len(parent))))
        del parent[index]
        del indices[index]

    def _original(self, loc: Loc) -> Loc:
        return _renumbered(self.kept, loc)


def _renumbered(kept: dict[Loc, list[int]], loc: Loc) -> Loc:
    result: list[int | str] = []
    for part in loc:
        indices = kept.get(tuple(result), [])
        if isinstance(part, int) and 0 <= part < len(indices):
            part = indices[part]
        result.append(part)
    return tuple(result)


def _walk(data: Any, loc: Loc) -> Any:
    for part in loc:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_dict or in_list):
            return None
        data = data[part]
    return data


def _sortable(loc: Loc) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, part) if isinstance(part, int) else (1, part) for part in loc)


def _related(one: Loc, other: Loc) -> bool:
    shorter = min(len(one), len(other))
    return one[:shorter] == other[:shorter]


def model_at(model: Any, loc: Loc) -> type[BaseModel] | None:
    """The model whose fields are the keys at `loc` (found by following annotations), or
    None where the keys are a mapping's own (environment, routes) or there is no model."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue  # list items: _model_in looks through list[...] annotations
        found = _model_in(current)
        if found is None or part not in found.model_fields:
            return None
        current = found.model_fields[part].annotation
    return _model_in(current)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
