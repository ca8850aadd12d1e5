"""crate_deploy.target.versions: the version tables, their helpers, and probing a target's venv."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from crate_deploy.target import versions
from crate_deploy.target.versions import (
    BEAT_OPTION_SINCE,
    FLOWER_OPTION_SINCE,
    NEWEST_KNOWN,
    SETTING_SINCE,
    WORKER_OPTION_SINCE,
    TargetVersions,
    VersionProbeError,
    interpreter_for,
    probe,
    release,
    unsupported,
)

CACHE = Path(os.environ.get("CRATE_DEPLOY_CACHE", "/var/cache/crate-deploy"))
OLDEST = TargetVersions("5.2.7", "5.3.7", "2.0.1", "probed")


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path


# --- versions and the dataclass ------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("5.2.7", (5, 2, 7)), ("5.3", (5, 3, 0)), ("5.7.0rc1", (5, 7, 0)), ("v2.0.1", (2, 0, 1)),
])
def test_release_parses_version_numbers(text: str, expected: tuple[int, int, int]) -> None:
    assert release(text) == expected


@pytest.mark.parametrize("text", ["", "five", "5", "latest"])
def test_release_refuses_what_is_not_a_version(text: str) -> None:
    with pytest.raises(ValueError, match="not a version"):
        release(text)


def test_target_versions_minors_and_source() -> None:
    assert OLDEST.celery_minor() == (5, 2)
    assert OLDEST.flower_minor() == (2, 0)
    assert TargetVersions("5.10.1", None, None, "site").celery_minor() == (5, 10)
    assert TargetVersions("5.4", None, None, "site").flower_minor() is None
    with pytest.raises(ValueError, match="source"):
        TargetVersions("5.2.7", None, None, "guessed")


def test_newest_known_is_celery_5_7_with_its_kombu_and_flower_2_2() -> None:
    assert (NEWEST_KNOWN.celery, NEWEST_KNOWN.kombu, NEWEST_KNOWN.flower) == (
        "5.7.0", "5.7.0", "2.2.0")
    assert NEWEST_KNOWN.source == "assumed"
    assert NEWEST_KNOWN.celery_minor() == (5, 7)


# --- the tables -------------------------------------------------------------------------


def test_tables_only_hold_what_came_after_the_baselines() -> None:
    for table in (SETTING_SINCE, WORKER_OPTION_SINCE, BEAT_OPTION_SINCE):
        assert table and all((5, 3) <= since <= NEWEST_KNOWN.celery_minor()
                             for since in table.values())
    assert all((2, 1) <= since <= (2, 2) for since in FLOWER_OPTION_SINCE.values())
    assert all(name == name.lower() and not name.startswith("-") for name in SETTING_SINCE)
    assert all(name.startswith("-") for name in [*WORKER_OPTION_SINCE, *BEAT_OPTION_SINCE])


@pytest.mark.parametrize(("name", "since"), [
    ("broker_connection_retry_on_startup", (5, 3)),
    ("worker_enable_prefetch_count_reduction", (5, 4)),
    ("worker_soft_shutdown_timeout", (5, 5)),
    ("worker_enable_soft_shutdown_on_idle", (5, 5)),
    ("worker_detect_quorum_queues", (5, 5)),
    ("task_default_queue_type", (5, 5)),
    ("broker_native_delayed_delivery_queue_type", (5, 5)),
    ("worker_disable_prefetch", (5, 6)),
    ("worker_pool_start_method", (5, 7)),
])
def test_known_settings_carry_the_minor_that_added_them(name: str, since: tuple[int, int]) -> None:
    assert SETTING_SINCE[name] == since


def test_settings_already_in_5_2_are_not_listed() -> None:
    for name in ("worker_cancel_long_running_tasks_on_connection_loss",
                 "result_chord_join_timeout", "task_acks_late", "worker_prefetch_multiplier"):
        assert name not in SETTING_SINCE


def test_unsupported_on_the_oldest_target_names_each_with_its_version() -> None:
    names = ["task_acks_late", "worker_soft_shutdown_timeout", "-O", "--optimization",
             "--prefetch-multiplier", "read_only", "broker_connection_retry_on_startup",
             "worker_soft_shutdown_timeout", "no_such_setting"]
    assert unsupported(names, OLDEST) == [
        ("worker_soft_shutdown_timeout", (5, 5)),
        ("--optimization", (5, 3)),
        ("read_only", (2, 1)),
        ("broker_connection_retry_on_startup", (5, 3)),
    ]


def test_unsupported_on_the_newest_target_is_empty() -> None:
    every = [*SETTING_SINCE, *WORKER_OPTION_SINCE, *FLOWER_OPTION_SINCE]
    assert unsupported(every, NEWEST_KNOWN) == []
    assert unsupported(BEAT_OPTION_SINCE, NEWEST_KNOWN, "beat") == []


def test_unsupported_compares_minors_and_patch_releases() -> None:
    def on(celery: str, name: str) -> bool:
        return bool(unsupported([name], TargetVersions(celery, None, "2.2.0", "site")))

    assert on("5.4.0", "worker_soft_shutdown_timeout")
    assert not on("5.5.0", "worker_soft_shutdown_timeout")
    assert not on("5.5", "worker_soft_shutdown_timeout")
    assert on("5.3.0", "--optimization")  # appeared in 5.3.1
    assert not on("5.3.1", "--optimization")


def test_unsupported_judges_flower_options_by_flower() -> None:
    assert unsupported(["read_only"], TargetVersions("5.2.7", None, "2.1.0", "site")) == []
    assert unsupported(["read_only"], TargetVersions("5.7.0", None, "2.0.1", "site")) == [
        ("read_only", (2, 1))]
    # Unknown Flower: taken as 2.0, because 2.0 ignores read_only without a word.
    assert unsupported(["read_only"], TargetVersions("5.7.0", None, None, "site")) == [
        ("read_only", (2, 1))]


def test_unsupported_with_a_kind_uses_only_that_table() -> None:
    # -n is an old worker option but a new beat one.
    assert unsupported(["-n"], OLDEST) == []
    assert unsupported(["-n", "--hostname"], OLDEST, "beat") == [("-n", (5, 7)),
                                                                  ("--hostname", (5, 7))]
    assert unsupported(["read_only"], OLDEST, "setting") == []


def test_module_imports_no_celery_kombu_or_flower() -> None:
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('v', {versions.__file__!r})\n"
        "module = sys.modules['v'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('celery', 'kombu', 'flower')))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


# --- probe() with made-up executables ---------------------------------------------------


def test_probe_follows_the_shebang(tmp_path: Path) -> None:
    celery = executable(tmp_path / "bin" / "celery", f"#!{sys.executable}\nraise SystemExit\n")
    assert interpreter_for(celery) == Path(sys.executable)
    found = probe(celery)
    assert found == TargetVersions(metadata.version("celery"), metadata.version("kombu"),
                                   metadata.version("flower"), "probed")


def test_probe_reads_pips_long_path_launcher(tmp_path: Path) -> None:
    celery = executable(tmp_path / "celery",
                        f"#!/bin/sh\n'''exec' \"{sys.executable}\" \"$0\" \"$@\"\n' '''\n")
    assert interpreter_for(celery) == Path(sys.executable)
    assert probe(celery).celery == metadata.version("celery")


def test_probe_falls_back_to_the_python_beside_an_env_shebang(tmp_path: Path) -> None:
    celery = executable(tmp_path / "bin" / "celery", "#!/usr/bin/env python3\n")
    python = executable(tmp_path / "bin" / "python3", f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    assert interpreter_for(celery) == python
    assert probe(celery).source == "probed"


def test_probe_missing_executable_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "celery"
    with pytest.raises(VersionProbeError, match=str(missing)):
        probe(missing)


def test_probe_without_an_interpreter(tmp_path: Path) -> None:
    celery = executable(tmp_path / "bin" / "celery", "#!/usr/bin/env python3\n")
    with pytest.raises(VersionProbeError, match="cannot find the Python interpreter"):
        probe(celery)


@pytest.mark.parametrize(("python_script", "message"), [
    ("echo 'Traceback: boom' >&2; exit 3", r"exit 3\): Traceback: boom"),
    ("echo 'not json'", "unexpected answer"),
    ("echo '[1, 2]'", "unexpected answer"),
    ("""echo '{"celery": null, "kombu": null, "flower": null}'""", "celery is not installed"),
    ("exec sleep 5", "no answer within 0.5s"),
])
def test_probe_failures_are_version_probe_errors(tmp_path: Path, python_script: str,
                                                 message: str) -> None:
    celery = executable(tmp_path / "bin" / "celery", "#!/usr/bin/env python3\n")
    executable(tmp_path / "bin" / "python", f"#!/bin/sh\n{python_script}\n")
    with pytest.raises(VersionProbeError, match=message) as caught:
        probe(celery, timeout=0.5)
    assert str(celery) in str(caught.value)


# --- probe() against the cached application venvs (built by .ci/app-venvs) ---------------


@pytest.mark.parametrize(("venv", "celery", "kombu", "flower"), [
    ("celery-5.2", "5.2.7", "5.3.7", "2.0.1"),
    ("celery-latest", NEWEST_KNOWN.celery, None, NEWEST_KNOWN.flower),
])
def test_probe_cached_app_venvs(venv: str, celery: str, kombu: str | None,
                                flower: str) -> None:
    executable_path = CACHE / "venvs" / venv / "bin" / "celery"
    if not executable_path.exists():
        pytest.skip(f"{executable_path} does not exist: run .ci/app-venvs to build the "
                    "application venvs (CRATE_DEPLOY_CACHE picks the cache directory)")
    found = probe(executable_path)
    assert (found.celery, found.flower, found.source) == (celery, flower, "probed")
    assert found.kombu is not None
    if kombu is not None:
        assert found.kombu == kombu
    else:  # whatever pip resolved for celery 5.7.0, which requires kombu>=5.7.0
        assert release(found.kombu) >= release(NEWEST_KNOWN.kombu or "5.7.0")
