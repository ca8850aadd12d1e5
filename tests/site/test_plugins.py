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

# `crate-deploy validate` of the example, in-process, then what was loaded.
VALIDATE = f"""
import json, sys
from crate_deploy.cli import main
try:
    main(["validate", {str(EXAMPLE)!r}])
except SystemExit as exit:
    code = exit.code
print(json.dumps({{"code": code, "metadata": "importlib.metadata" in sys.modules,
                  "loader": type(sys.modules["pydantic.plugin._loader"]).__name__}}))
"""
# The stand-in registered as the program would, then what an import of the loader finds.
STAND_IN = """
import json, sys
from crate_deploy.site.plugins import skip_plugin_search
skip_plugin_search()
import pydantic.plugin._loader as loader
print(json.dumps({"group": loader.PYDANTIC_ENTRY_POINT_GROUP,
                  "loader": type(sys.modules["pydantic.plugin._loader"]).__name__}))
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
    loaded = _python(VALIDATE, tmp_path)
    assert loaded["code"] == 0
    assert "valid (2 worker pool(s)" in str(loaded["stdout"])
    assert loaded["metadata"] is False
    assert loaded["loader"] == "_NoPluginSearch"


def test_a_plugin_the_user_leaves_on_is_loaded_by_pydantic_itself(
        recording_plugin: Path) -> None:
    """PYDANTIC_DISABLE_PLUGINS naming another plugin: pydantic's own loader runs, and the
    installed plugin is asked for the site's validator."""
    loaded = _python(VALIDATE, recording_plugin, PYDANTIC_DISABLE_PLUGINS="some_other")
    assert loaded["metadata"] is True
    assert loaded["loader"] == "module"
    assert "plugin: asked" in str(loaded["stdout"])


def test_switching_plugins_back_on_later_reaches_pydantic_s_loader(
        recording_plugin: Path) -> None:
    """get_plugins() reads the switch on every call, as pydantic's does."""
    code = VALIDATE.replace("try:", "import os\nos.environ['PYDANTIC_DISABLE_PLUGINS'] = ''\n"
                            "try:")
    loaded = _python(code, recording_plugin)
    assert loaded["loader"] == "module"
    assert "plugin: asked" in str(loaded["stdout"])


def test_nothing_is_registered_once_pydantic_has_its_own_loader(tmp_path: Path) -> None:
    code = STAND_IN.replace("from crate_deploy",
                            "import pydantic.plugin._loader\nfrom crate_deploy")
    assert _python(code, tmp_path, PYDANTIC_DISABLE_PLUGINS="__all__")["loader"] == "module"


def test_any_other_name_is_pydantic_s_own(tmp_path: Path) -> None:
    """The import system's questions are the stand-in's to answer; any other name goes to
    pydantic's loader, which from then on is the one every import finds."""
    loaded = _python(STAND_IN, tmp_path, PYDANTIC_DISABLE_PLUGINS="__all__")
    assert (loaded["group"], loaded["loader"]) == ("pydantic", "module")


def test_a_command_line_without_a_command_does_not_load_pydantic(tmp_path: Path) -> None:
    code = ("import json, sys\nfrom crate_deploy.cli import main\ntry:\n"
            "    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print(json.dumps({'pydantic': 'pydantic' in sys.modules}))")
    assert _python(code, tmp_path)["pydantic"] is False
