"""Which Celery, kombu and Flower a fleet runs, and what those versions accept.

Never imports Celery, kombu or Flower: `probe` asks the *target's* interpreter for its
installed distributions, and the tables below are plain data.

The tables (derived 2026-11-25) come from throwaway venvs on Python 3.11 holding celery
5.2.7, 5.3.0, 5.3.1, 5.3.6, 5.4.0, 5.5.0, 5.5.3, 5.6.0, 5.6.3 and 5.7.0 (flower 2.0.1,
2.1.0, 2.2.0): the keys of ``celery.app.defaults.DEFAULTS``, the option strings of the
click commands ``celery.bin.worker.worker`` / ``celery.bin.beat.beat`` (as ``--help``
shows them) and the ``define()``d names of ``flower/options.py`` were diffed, version to
version. Only additions after the baseline (Celery 5.2, Flower 2.0) are listed; nothing
was removed or renamed between 5.2.7 and 5.7.0 (settings, worker or beat options) or
between Flower 2.0.1 and 2.2.0. ``(5, 5)`` means "in every 5.5.x"; the one name that
appeared in a patch release is also in PATCH_SINCE. Settings some may expect to be new,
``worker_cancel_long_running_tasks_on_connection_loss`` and ``result_chord_join_timeout``,
are already in 5.2.7. Values, not names: ``--pool custom`` is accepted from 5.3.0 and
``--concurrency auto`` from 5.7.0.

Verified facts (2026-11-25, by experiment in the app venvs of .ci/app-venvs, RabbitMQ on
127.0.0.1 in a throwaway vhost):

a. Flower basic auth from the environment. ``FLOWER_BASIC_AUTH=user:pass`` set by the app
   module at import (``os.environ[...] = ...``) is honoured by ``celery -A mod flower`` on
   flower 2.0.1 (celery 5.2.7) and 2.2.0 (celery 5.7.0): ``/`` answers 401 (with
   ``WWW-Authenticate: Basic realm="flower"``) without or with wrong credentials and 200
   with them; ``/api/workers`` answers 401 / 200 likewise. Same when exported by the shell.
   A ``--conf=flowerconfig.py`` that does not mention basic_auth leaves the env value in
   force; one that sets ``basic_auth``, or ``--basic-auth`` on the command line, replaces
   it (env < conf file < command line). ``/healthcheck`` answers 200 "OK" without auth,
   and so does ``/metrics`` (Prometheus) even when basic auth is on. With no auth at all
   ``/`` is open but ``/api/*`` answers 401 unless ``FLOWER_UNAUTHENTICATED_API`` is set.
   Flower 2.0.1 silently ignores ``read_only`` (conf file, ``--read-only`` and
   ``FLOWER_READ_ONLY`` alike): it starts and is *not* read-only, so refuse it before 2.1.
b. Worker options in both 5.2.7 and 5.7.0 (workers started with all of them, checked with
   ``inspect stats``): ``-O fair``, ``--prefetch-multiplier``, ``--without-mingle``,
   ``--without-gossip``, ``--max-tasks-per-child``, ``--max-memory-per-child``,
   ``--soft-time-limit``, ``--time-limit``, ``--autoscale MAX,MIN``, ``-E`` /
   ``--task-events`` / ``--events``, ``--pidfile``. Not in 5.2.7: the long form
   ``--optimization`` ("No such option", exit 2; from 5.3.1), so always render ``-O``.
   No pidfile is written unless ``--pidfile`` is given (worker and beat, both versions).
   Beat in both: ``-s`` / ``--schedule`` (default ``celerybeat-schedule`` in the working
   directory, stored by dbm as .bak/.dat/.dir), ``--pidfile`` (removed on exit). 5.2.7
   with click >= 8.2 prints "UserWarning: The parameter --uid is used more than once" on
   every command (harmless).
c. App does ``app.config_from_object(Obj, namespace="CELERY")`` with
   ``CELERY_WORKER_PREFETCH_MULTIPLIER = 4`` and ``CELERY_TASK_ACKS_LATE = False``; a second
   module imports it and calls ``app.conf.update({"worker_prefetch_multiplier": 1,
   "task_acks_late": True})``; the worker is ``celery -A second worker -c 2``.
   5.2.7: the update LOSES. ``inspect conf`` lists both the CELERY_* keys (4, false) and
   the update (1, true), but the worker runs with prefetch 4 (``inspect stats``
   prefetch_count 8) and acks_late False. 5.7.0: the update wins (prefetch_count 2,
   acks_late True). In both, an update spelled with the namespace
   (``{"CELERY_WORKER_PREFETCH_MULTIPLIER": 1, "CELERY_TASK_ACKS_LATE": True}``) wins, and
   when Obj does not set those keys the plain update wins. Without a namespace the update
   wins in both, whether Obj uses new lowercase names or old ones (``CELERYD_PREFETCH_
   MULTIPLIER``, which ``inspect conf`` then shows as 1). "Cannot mix new and old setting
   keys" (ImproperlyConfigured) was raised only when a single source mixes old and new
   names (``BROKER_URL`` with ``worker_prefetch_multiplier``), never by the update. Also:
   5.7.0's ``inspect conf`` shows a namespaced ``CELERY_BROKER_URL`` password in clear
   (5.2.7 masks it). A setting a version does not know (``worker_soft_shutdown_timeout``
   on 5.2.7, or a made-up name) is accepted without a word and even listed by ``inspect
   conf``, so ``inspect conf`` proves nothing; ``unsupported`` must catch it at render.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SOURCES = ("probed", "site", "assumed")

Since = tuple[int, int]
Kind = Literal["setting", "worker", "beat", "flower"]

_VERSION = re.compile(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


def release(version: str) -> tuple[int, int, int]:
    """``"5.2.7"`` -> ``(5, 2, 7)``; a missing patch is 0 and a suffix (``rc1``) is ignored."""
    match = _VERSION.match(version)
    if match is None:
        raise ValueError(f"not a version number: {version!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


@dataclass(frozen=True)
class TargetVersions:
    """The versions a fleet is rendered for, and where they came from (one of SOURCES)."""

    celery: str
    kombu: str | None
    flower: str | None
    source: str
    # For probed versions: what identifies the probed celery program and the venv beside
    # it (target/probe.py), taken once per render and recorded in each deployment.json
    # so the next render reuses the probe. Not part of what the versions are.
    stamp: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {self.source!r}")

    def celery_minor(self) -> tuple[int, int]:
        major, minor, _ = release(self.celery)
        return major, minor

    def flower_minor(self) -> tuple[int, int] | None:
        if self.flower is None:
            return None
        major, minor, _ = release(self.flower)
        return major, minor


#: celery 5.7.0 requires kombu>=5.7.0; pip resolves it to kombu 5.7.0 (2026-11-25).
NEWEST_KNOWN = TargetVersions("5.7.0", "5.7.0", "2.2.0", "assumed")

_SETTINGS_ADDED: dict[Since, tuple[str, ...]] = {
    (5, 3): ("beat_cron_starting_deadline", "broker_channel_error_retry",
             "broker_connection_retry_on_startup", "cassandra_bundle_path",
             "security_key_password", "task_allow_error_cb_on_chord_header"),
    (5, 4): ("gcs_base_path", "gcs_bucket", "gcs_project", "gcs_ttl",
             "worker_enable_prefetch_count_reduction"),
    (5, 5): ("broker_native_delayed_delivery_queue_type", "database_create_tables_at_setup",
             "task_default_queue_type", "worker_detect_quorum_queues",
             "worker_enable_soft_shutdown_on_idle", "worker_soft_shutdown_timeout"),
    (5, 6): ("control_queue_durable", "control_queue_exclusive", "event_queue_durable",
             "event_queue_exclusive", "task_create_missing_queue_exchange_type",
             "task_create_missing_queue_type", "worker_disable_prefetch",
             "worker_eta_task_limit"),
    (5, 7): ("beat_enable_remote_control", "beat_remote_control_max_tick_age",
             "broker_pool_acquire_timeout", "database_engine_callback", "result_chord_expires",
             "result_failure_expires", "task_acks_on_failure", "task_acks_on_timeout",
             "task_repr_maxlevels", "task_retry_on_worker_lost", "worker_log_datefmt",
             "worker_pool_start_method", "worker_task_log_datefmt"),
}

#: Celery settings (flattened lowercase names) added after 5.2, with the minor that added them.
SETTING_SINCE: dict[str, Since] = {
    name: since for since, names in _SETTINGS_ADDED.items() for name in names
}

#: ``celery worker`` option strings added after 5.2 (``-O`` itself is in 5.2).
WORKER_OPTION_SINCE: dict[str, Since] = {
    "--optimization": (5, 3),
    "--disable-prefetch": (5, 6),
    "--pool-start-method": (5, 7),
}

#: ``celery beat`` option strings added after 5.2 (the worker's ``-n`` is older: other table).
BEAT_OPTION_SINCE: dict[str, Since] = {
    "--enable-remote-control": (5, 7),
    "--no-enable-remote-control": (5, 7),
    "-n": (5, 7),
    "--hostname": (5, 7),
}

#: Flower options (``flower/options.py`` names, as in a flowerconfig.py) added after 2.0.
FLOWER_OPTION_SINCE: dict[str, Since] = {
    "read_only": (2, 1),
}

#: Names that arrived in a patch release: absent from the minor's first release.
PATCH_SINCE: dict[str, tuple[int, int, int]] = {
    "--optimization": (5, 3, 1),
}

_TABLES: dict[Kind, dict[str, Since]] = {
    "setting": SETTING_SINCE,
    "worker": WORKER_OPTION_SINCE,
    "beat": BEAT_OPTION_SINCE,
    "flower": FLOWER_OPTION_SINCE,
}


def _kind_of(name: str) -> Kind | None:
    if name.startswith("-"):
        return "worker" if name in WORKER_OPTION_SINCE else None
    if name in SETTING_SINCE:
        return "setting"
    return "flower" if name in FLOWER_OPTION_SINCE else None


def unsupported(
    names: Iterable[str], versions: TargetVersions, kind: Kind | None = None
) -> list[tuple[str, Since]]:
    """The names that ``versions`` does not know, each with the version that introduced it.

    ``kind`` picks the table; without it a name starting with ``-`` is a worker option and
    any other a setting, else a Flower option. Names in no table predate the baselines
    (Celery 5.2, Flower 2.0) and are supported. Settings and worker/beat options are judged
    by ``versions.celery``; Flower options by ``versions.flower``, where an unknown Flower
    (None) is taken as the baseline 2.0, since Flower ignores options it does not know.
    """
    celery = release(versions.celery)
    flower = release(versions.flower) if versions.flower is not None else (2, 0, 0)
    found: list[tuple[str, Since]] = []
    for name in dict.fromkeys(names):
        table_kind = kind if kind is not None else _kind_of(name)
        if table_kind is None or name not in _TABLES[table_kind]:
            continue
        since = _TABLES[table_kind][name]
        if table_kind == "flower":
            have, first = flower, (*since, 0)
        else:
            have, first = celery, PATCH_SINCE.get(name, (*since, 0))
        if have < first:
            found.append((name, since))
    return found


class VersionProbeError(Exception):
    """The versions installed behind a celery executable could not be found out."""


# Runs in the target's interpreter under -I: reads distribution metadata only, so neither
# Celery nor the application is imported.
_PROBE_SCRIPT = """\
import json
from importlib import metadata
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
print(json.dumps({name: version(name) for name in ("celery", "kombu", "flower")}))
"""

# pip's launcher for an interpreter path too long (or odd) for a "#!" line.
_SH_EXEC = re.compile(r"""^'''exec' (?:"([^"]+)"|(\S+))""")


def _executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _from_shebang(script: Path) -> Path | None:
    try:
        with script.open("rb") as stream:
            head = stream.read(4096).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    if not head or not head[0].startswith("#!"):
        return None
    words = head[0][2:].split()
    if words and words[0] in ("/bin/sh", "/usr/bin/sh") and len(head) > 1:
        match = _SH_EXEC.match(head[1])
        words = [match.group(1) or match.group(2)] if match else []
    if not words or not words[0].startswith("/") or Path(words[0]).name in ("env", "sh"):
        return None  # "#!/usr/bin/env python3" depends on the service's PATH
    return Path(words[0])


def interpreter_for(celery_executable: Path) -> Path:
    """The Python that runs ``celery_executable``.

    Its ``#!`` line first (the interpreter that really runs it, also through a symlink),
    else ``python`` / ``python3`` beside it (or beside the file a symlink points to). The
    interpreter path is never resolved: a venv's bin/python is a symlink to the base
    Python, and resolving it would step out of the venv.
    """
    shebang = _from_shebang(celery_executable)
    if shebang is not None and _executable_file(shebang):
        return shebang
    for directory in dict.fromkeys((celery_executable.parent, celery_executable.resolve().parent)):
        for name in ("python", "python3"):
            if _executable_file(directory / name):
                return directory / name
    raise VersionProbeError(f"{celery_executable}: cannot find the Python interpreter that runs it")


def probe(celery_executable: Path, timeout: float = 20) -> TargetVersions:
    """The celery, kombu and flower installed for ``celery_executable`` (source "probed")."""
    if not celery_executable.is_file():
        raise VersionProbeError(f"{celery_executable}: no such celery executable")
    import subprocess  # here: a render from a cached probe (most) starts no process

    python = interpreter_for(celery_executable)
    where = f"{celery_executable} (probed with {python})"
    try:
        result = subprocess.run(
            [str(python), "-I", "-c", _PROBE_SCRIPT], capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise VersionProbeError(f"{where}: no answer within {timeout:g}s") from None
    except OSError as exc:
        raise VersionProbeError(f"{where}: cannot run the interpreter: {exc}") from exc
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise VersionProbeError(f"{where}: probe failed (exit {result.returncode}): {detail}")
    try:
        found = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise VersionProbeError(f"{where}: unexpected answer {result.stdout!r}") from None
    if not isinstance(found, dict) or not all(
            isinstance(found.get(name), str | None) for name in ("celery", "kombu", "flower")):
        raise VersionProbeError(f"{where}: unexpected answer {result.stdout!r}")
    if found.get("celery") is None:
        raise VersionProbeError(f"{where}: celery is not installed for that interpreter")
    return TargetVersions(found["celery"], found.get("kombu"), found.get("flower"), "probed")
