"""site/plugins.py: the program skips pydantic's plugin search only while every plugin is
switched off, and pydantic's real loader answers otherwise.

Each case runs in a fresh interpreter: which modules a process loads is the point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "site.yaml"

# `crate-deploy validate` of the example as the program runs it, then what was loaded.
PROGRAM = f"""
import json, sys
from crate_deploy.cli import main
sys.argv = ["crate-deploy", "validate", {str(EXAMPLE)!r}]
try:
    main()
except SystemExit as exit:
    code = exit.code
loader = sys.modules["pydantic.plugin._loader"]
print(json.dumps({{"code": code, "metadata": "importlib.metadata" in sys.modules,
                  "stand-in": loader.get_plugins.__code__.co_filename.endswith("plugins.py")}}))
"""
# The stand-in registered as the program registers it, the switch then set as SWITCH_TO,
# and the example validated.
REGISTERED = f"""
import json, os, sys
from pathlib import Path
from crate_deploy.site.plugins import skip_plugin_search
from crate_deploy.site.validate import validate_file
skip_plugin_search()
os.environ["PYDANTIC_DISABLE_PLUGINS"] = os.environ["SWITCH_TO"]
validate_file(Path({str(EXAMPLE)!r}))
print(json.dumps({{"metadata": "importlib.metadata" in sys.modules}}))
"""


def _python(code: str, tmp_path: Path, **env: str) -> dict[str, object]:
    environment = {key: value for key, value in os.environ.items()
                   if key != "PYDANTIC_DISABLE_PLUGINS"}
    environment.update(env)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path), *filter(None, [environment.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=environment, cwd=tmp_path, check=True, timeout=60)
    document: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    document["stdout"] = result.stdout
    return document


@pytest.fixture
def recording_plugin(tmp_path: Path) -> Path:
    """A real pydantic plugin, installed as a distribution with an entry point: it prints
    a line each time pydantic builds a validator with it."""
    (tmp_path / "recording_plugin.py").write_text(textwrap.dedent("""
        class Plugin:
            def new_schema_validator(self, *args, **kwargs):
                print("plugin: asked", flush=True)
                return None, None, None
        plugin = Plugin()
    """))
    info = tmp_path / "recording_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: recording-plugin\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text("[pydantic]\nrecording = recording_plugin:plugin\n")
    return tmp_path


def test_the_program_validates_without_importing_importlib_metadata(tmp_path: Path) -> None:
    loaded = _python(PROGRAM, tmp_path)
    assert loaded["code"] == 0
    assert "valid (2 worker pool(s)" in str(loaded["stdout"])
    assert loaded["metadata"] is False
    assert loaded["stand-in"] is True


def test_a_caller_of_main_in_its_own_process_keeps_pydantic_s_loader(tmp_path: Path) -> None:
    code = PROGRAM.replace("main()", f"main(['validate', {str(EXAMPLE)!r}])")
    loaded = _python(code, tmp_path)
    assert (loaded["code"], loaded["metadata"], loaded["stand-in"]) == (0, True, False)


def test_a_plugin_the_user_leaves_on_is_loaded_by_pydantic_itself(
        recording_plugin: Path) -> None:
    """PYDANTIC_DISABLE_PLUGINS naming another plugin: nothing is registered, pydantic's
    own loader runs, and the installed plugin is asked for the site's validator."""
    loaded = _python(PROGRAM, recording_plugin, PYDANTIC_DISABLE_PLUGINS="some_other")
    assert loaded["metadata"] is True
    assert "plugin: asked" in str(loaded["stdout"])


@pytest.mark.parametrize("switch", ["", "some_other"])
def test_plugins_switched_on_after_the_stand_in_reach_pydantic_s_loader(
        recording_plugin: Path, switch: str) -> None:
    """The stand-in reads the switch on every call, as pydantic's get_plugins does, and
    then defers to pydantic's loader, which finds the installed plugin."""
    loaded = _python(REGISTERED, recording_plugin, PYDANTIC_DISABLE_PLUGINS="__all__",
                     SWITCH_TO=switch)
    assert "plugin: asked" in str(loaded["stdout"])
    assert loaded["metadata"] is True


def test_the_stand_in_answers_while_plugins_stay_off(recording_plugin: Path) -> None:
    loaded = _python(REGISTERED, recording_plugin, PYDANTIC_DISABLE_PLUGINS="__all__",
                     SWITCH_TO="true")
    assert "plugin: asked" not in str(loaded["stdout"])
    assert loaded["metadata"] is False


def test_nothing_is_registered_once_pydantic_has_its_own_loader(tmp_path: Path) -> None:
    code = ("import json, sys\nimport pydantic.plugin._loader\n"
            "from crate_deploy.site.plugins import skip_plugin_search\nskip_plugin_search()\n"
            "loader = sys.modules['pydantic.plugin._loader']\n"
            "print(json.dumps({'file': loader.__file__.endswith('_loader.py'),"
            " 'ours': loader.get_plugins.__code__.co_filename.endswith('plugins.py')}))")
    loaded = _python(code, tmp_path, PYDANTIC_DISABLE_PLUGINS="__all__")
    assert (loaded["file"], loaded["ours"]) == (True, False)


STAND_IN = """
import importlib.util, json, pickle, sys
from crate_deploy.site.plugins import skip_plugin_search
skip_plugin_search()
import pydantic.plugin._loader as loader
from pydantic.plugin import _loader
spec = importlib.util.find_spec("pydantic.plugin._loader")
same = pickle.loads(pickle.dumps(loader.get_plugins)) is loader.get_plugins
answer = list(loader.get_plugins())
metadata_before = "importlib.metadata" in sys.modules
loader._plugins = {"mine": "PLUGIN"}  # pydantic's cache, set on the stand-in
import os
os.environ["PYDANTIC_DISABLE_PLUGINS"] = "some_other"
print(json.dumps({"same module": loader is _loader, "origin": spec.origin,
                  "file": loader.__file__, "pickled": same, "answer": answer,
                  "metadata before": metadata_before,
                  "group": loader.PYDANTIC_ENTRY_POINT_GROUP,
                  "cached plugins": list(loader.get_plugins()),
                  "now": sys.modules["pydantic.plugin._loader"].get_plugins.__code__.co_filename,
                  "real file": sys.modules["pydantic.plugin._loader"].__file__}))
"""


def test_the_stand_in_looks_like_the_module_it_stands_in_for(tmp_path: Path) -> None:
    """Both import spellings, importlib's find_spec, its file, pickling get_plugins by
    name; then any other name asked of it (and a plugin switched on) is the real loader's,
    with what was set on the stand-in carried over."""
    loaded = _python(STAND_IN, tmp_path, PYDANTIC_DISABLE_PLUGINS="__all__")
    assert loaded["same module"] is True
    assert str(loaded["origin"]).endswith("pydantic/plugin/_loader.py")
    assert loaded["file"] == loaded["origin"] == loaded["real file"]
    assert (loaded["pickled"], loaded["answer"], loaded["metadata before"]) == (True, [], False)
    assert loaded["group"] == "pydantic"
    assert loaded["cached plugins"] == ["PLUGIN"]
    assert str(loaded["now"]).endswith("pydantic/plugin/_loader.py")


def test_a_command_line_without_a_command_does_not_load_pydantic(tmp_path: Path) -> None:
    code = ("import json, sys\nfrom crate_deploy.cli import main\n"
            "sys.argv = ['crate-deploy', '--version']\ntry:\n    main()\nexcept SystemExit:\n"
            "    pass\nprint(json.dumps({'pydantic': 'pydantic' in sys.modules}))")
    assert _python(code, tmp_path)["pydantic"] is False
