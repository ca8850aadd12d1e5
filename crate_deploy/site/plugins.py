"""pydantic without its plugin search, for the crate-deploy program.

The site file's models want no pydantic plugins, so the program sets
PYDANTIC_DISABLE_PLUGINS=__all__ (pydantic's documented switch; a value the user set is
kept): otherwise pydantic reads every installed distribution's entry points when it builds
its first validator (~30 ms). Switched off, pydantic 2's plugin loader (its private module
pydantic.plugin._loader) still imports importlib.metadata at its top, and with it email,
zipfile and csv (~15 ms, 7% of a first render), only to answer "no plugins".

`skip_plugin_search()`, which the program calls before it builds the models, registers a
stand-in of that name, before pydantic loads its loader, whose get_plugins() gives
pydantic's own answer under that switch (none) without the import. get_plugins() reads
the switch on every call, as pydantic's does: any other answer, and any other name asked
of the stand-in (a pydantic that reorganised its loader), loads pydantic's real module and
defers to it from then on (what was set on the stand-in carried over), at the old cost.
The stand-in has the real module's spec and file, and its get_plugins pickles by name.
Nothing is registered unless every plugin is switched off, or once pydantic has loaded
its own; a library caller of crate_deploy that does not run the program gets none of it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from typing import Any

LOADER = "pydantic.plugin._loader"
SWITCH = "PYDANTIC_DISABLE_PLUGINS"
_ALL_OFF = ("__all__", "1", "true")  # pydantic's spellings of "no plugin at all"


def get_plugins() -> Any:
    """pydantic's get_plugins(), without importing importlib.metadata when it can answer
    "none" from the switch alone."""
    if os.environ.get(SWITCH) in _ALL_OFF:
        return ()
    return _real_loader().get_plugins()


def _module_getattr(name: str) -> Any:
    """Any other name asked of the stand-in is the real loader's."""
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

    spec = importlib.util.find_spec(LOADER)  # found, not run
    stand_in = types.ModuleType(LOADER, "Stands in for pydantic's plugin loader while every "
                                "plugin is switched off (crate_deploy/site/plugins.py).")
    stand_in.__spec__, stand_in.__loader__ = spec, getattr(spec, "loader", None)
    stand_in.__file__ = getattr(spec, "origin", None)
    stand_in.__package__ = "pydantic.plugin"
    stand_in.get_plugins = get_plugins  # type: ignore[attr-defined]
    stand_in.__getattr__ = _module_getattr  # type: ignore[method-assign]
    sys.modules[LOADER] = stand_in
    # As the import system does for a submodule it loads: pydantic.plugin._loader works.
    pydantic.plugin._loader = stand_in  # type: ignore[attr-defined]


def _real_loader() -> types.ModuleType:
    """pydantic's own loader, from now on the one every import of it finds, with whatever
    a caller set on the stand-in."""
    stand_in = sys.modules.get(LOADER)
    if stand_in is None or vars(stand_in).get("get_plugins") is not get_plugins:
        return importlib.import_module(LOADER)  # pydantic's own is the one registered
    del sys.modules[LOADER]
    real = importlib.import_module(LOADER)
    for name, value in vars(stand_in).items():
        if not name.startswith("__") and value is not get_plugins:
            setattr(real, name, value)
    return real


# Pickled, and found by inspect, under the module it stands in for.
get_plugins.__module__ = LOADER
