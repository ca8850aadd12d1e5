"""pydantic without its plugin search, for the crate-deploy program.

The site file's models want no pydantic plugins, so the program sets
PYDANTIC_DISABLE_PLUGINS=__all__ (pydantic's documented switch; a value the user set is
kept): otherwise pydantic reads every installed distribution's entry points when it builds
its first validator (~30 ms). Switched off, pydantic 2's plugin loader (its private module
pydantic.plugin._loader) still imports importlib.metadata at its top, and with it email,
zipfile and csv (~15 ms, 7% of a first render), only to answer "no plugins".

`skip_plugin_search()` registers, before pydantic loads its loader, a module of that name
whose get_plugins() gives pydantic's own answer under that switch (none) without the
import. It is exact by construction: get_plugins() reads the switch on every call, as
pydantic's does, and any answer but "none at all", or any other name asked of the module
(a pydantic that reorganised its loader), loads and defers to pydantic's real module, at
the old cost. Nothing is registered unless every plugin is switched off, or once pydantic
has loaded its own.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Any

LOADER = "pydantic.plugin._loader"
SWITCH = "PYDANTIC_DISABLE_PLUGINS"
_ALL_OFF = ("__all__", "1", "true")  # pydantic's spellings of "no plugin at all"


class _NoPluginSearch(types.ModuleType):
    """Stands in for pydantic.plugin._loader while every plugin is switched off."""

    def get_plugins(self) -> Any:
        if os.environ.get(SWITCH) in _ALL_OFF:
            return ()
        return _real_loader().get_plugins()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # the import system asking whether this is a package
            raise AttributeError(name)
        return getattr(_real_loader(), name)


def skip_plugin_search() -> None:
    """Answer pydantic's plugin search without importing importlib.metadata, when every
    plugin is switched off (see the module's docstring). This imports pydantic (its
    plugin package), so it belongs where the program is about to build the models."""
    if os.environ.get(SWITCH) not in _ALL_OFF or LOADER in sys.modules:
        return
    import pydantic.plugin

    stand_in = _NoPluginSearch(LOADER)
    sys.modules[LOADER] = stand_in
    # As the import system does for a submodule it loads: pydantic.plugin._loader works.
    pydantic.plugin._loader = stand_in  # type: ignore[attr-defined]


def _real_loader() -> types.ModuleType:
    """pydantic's own loader, from now on the one every import of it finds."""
    if isinstance(sys.modules.get(LOADER), _NoPluginSearch):
        del sys.modules[LOADER]
    return importlib.import_module(LOADER)
