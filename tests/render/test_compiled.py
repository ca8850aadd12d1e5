"""The compiled-template cache (render/compiled.py): used across runs, and never where
anyone else could have written the code it runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest

from crate_deploy.render import jinja as render_jinja
from crate_deploy.render.compiled import bytecode_cache
from crate_deploy.render.jinja import render_template

NOBODY = 65534
TEMPLATE = "_header.j2"
VALUES = {"comment": "#", "version": "0.1.0", "source": "site.yaml"}


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    render_jinja.environment.cache_clear()
    yield tmp_path / "cache"
    render_jinja.environment.cache_clear()  # the next test gets the usual environment


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the templates Jinja compiles (rather than loads from the cache)."""
    names: list[str] = []
    original = jinja2.Environment.compile

    def counting(self: jinja2.Environment, source: str, name: str | None = None,
                 filename: str | None = None) -> object:
        names.append(str(name))
        return original(self, source, name, filename)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    return names


def fresh_render() -> str:
    """The template rendered as a new process would: a new environment."""
    render_jinja.environment.cache_clear()
    return render_template(TEMPLATE, **VALUES)


def test_a_template_compiled_once_is_loaded_from_the_users_cache(
        cache_home: Path, compiled: list[str]) -> None:
    first = fresh_render()
    assert compiled == [TEMPLATE]
    assert fresh_render() == first
    assert compiled == [TEMPLATE]  # the second environment compiled nothing
    folder = cache_home / "crate-deploy"
    assert folder.stat().st_mode & 0o777 == 0o700
    files = list(folder.iterdir())
    assert files and all(path.stat().st_mode & 0o777 == 0o600 for path in files)


def test_an_edited_template_is_compiled_again(tmp_path: Path, cache_home: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "t.j2").write_text("one {{ x }}\n")

    def render() -> str:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates),
                                 undefined=jinja2.StrictUndefined, autoescape=False)
        env.bytecode_cache = bytecode_cache(env)
        assert env.bytecode_cache is not None
        return env.get_template("t.j2").render(x=1)

    assert render() == "one 1"
    (templates / "t.j2").write_text("two {{ x }}\n")
    assert render() == "two 1"


def test_a_filter_that_changes_how_it_is_called_is_compiled_again(
        tmp_path: Path, cache_home: Path) -> None:
    """Jinja compiles a filter's pass_context into the call: code compiled while the
    filter took none must not run once it takes one (an upgrade that changes a filter
    but not the templates using it)."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "t.j2").write_text("{{ x | shout }}\n")

    def plain(value: str) -> str:
        return value.upper()

    @jinja2.pass_context
    def with_context(context: object, value: str) -> str:
        return value.upper() + "!"

    def render(shout: object) -> str:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates),
                                 undefined=jinja2.StrictUndefined, autoescape=False)
        env.filters["shout"] = shout
        env.bytecode_cache = bytecode_cache(env)
        return env.get_template("t.j2").render(x="hi")

    assert render(plain) == "HI"
    assert render(with_context) == "HI!"  # was: TypeError, the old code's call


def planted(cache_home: Path) -> list[Path]:
    """Every cached file replaced by one whose code would render something else."""
    fresh_render()
    sentinel = "planted"
    files = sorted((cache_home / "crate-deploy").iterdir())
    env = render_jinja.environment()
    code = env.compile(sentinel, TEMPLATE, str(render_jinja.templates_dir() / TEMPLATE))
    for path in files:
        bucket = jinja2.bccache.Bucket(env, "", "")
        bucket.checksum = env.bytecode_cache.get_source_checksum(  # type: ignore[union-attr]
            (render_jinja.templates_dir() / TEMPLATE).read_text())
        bucket.code = code
        path.write_bytes(bucket.bytecode_to_string())
    assert fresh_render() == sentinel  # the planted code runs when the file is trusted
    return files


def test_a_cached_file_writable_by_others_is_not_run(cache_home: Path,
                                                     compiled: list[str]) -> None:
    for path in planted(cache_home):
        path.chmod(0o666)
    assert fresh_render() != "planted"


def test_a_cached_file_of_another_user_is_not_run(cache_home: Path) -> None:
    for path in planted(cache_home):
        os.chown(path, NOBODY, NOBODY)
    assert fresh_render() != "planted"


def test_a_cache_folder_open_to_others_is_not_used(cache_home: Path) -> None:
    planted(cache_home)
    (cache_home / "crate-deploy").chmod(0o777)
    assert fresh_render() != "planted"
    assert render_jinja.environment().bytecode_cache is None


def test_a_cache_folder_that_is_a_link_is_not_followed(cache_home: Path,
                                                       tmp_path: Path) -> None:
    planted(cache_home)
    (cache_home / "crate-deploy").rename(tmp_path / "elsewhere")
    (cache_home / "crate-deploy").symlink_to(tmp_path / "elsewhere")
    assert fresh_render() != "planted"
    assert render_jinja.environment().bytecode_cache is None


def test_nothing_is_cached_in_a_home_that_is_someone_elses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sudo` may keep the caller's HOME: root leaves nothing of its own in it."""
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    render_jinja.environment.cache_clear()
    try:
        assert fresh_render()
        assert render_jinja.environment().bytecode_cache is None
        assert list(home.iterdir()) == []
    finally:
        render_jinja.environment.cache_clear()
