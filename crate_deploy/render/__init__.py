"""Site -> files: pure functions; nothing here touches the disk (write.py does).

One Jinja environment with StrictUndefined renders templates/. Values reach the
output only through the escaping filters below: `unit_*` for systemd lines,
`env_value` for environment files, `py` for Python literals.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from crate_deploy import __version__
from crate_deploy.errors import RenderError
from crate_deploy.plan import names
from crate_deploy.plan.compat import drop_unknown
from crate_deploy.plan.producer import producer_module
from crate_deploy.plan.settings import (
    celery_settings,
    dead_letter_queues,
    flower_basic_auth,
    flower_options,
    pool_settings,
)
from crate_deploy.site.checks import stop_timeout
from crate_deploy.site.model import Site, Worker
from crate_deploy.target.versions import TargetVersions

# Characters that never need quoting in an ExecStart= word.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./@:,=+-")


@dataclass(frozen=True)
class RenderedFile:
    path: str  # relative to the output directory, '/'-separated
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class Rendering:
    files: list[RenderedFile]
    notes: list[str] = field(default_factory=list)


def render_site(site: Site, source: str, config_dir: str, versions: TargetVersions,
                stamp: str | None = None) -> Rendering:
    """Every file the site needs, with config_dir as the place they will live on the server.

    `stamp` identifies the probed celery program, so the next render can reuse the probe.
    """
    context = _Context(site, source, config_dir, versions)
    settings, notes = drop_unknown(celery_settings(site), versions)
    files = [
        context.python(f"{names.APP_MODULE}.py", "app.py.j2", app=site.app),
        context.python(f"{names.CONFIG_MODULE}.py", "celeryconfig.py.j2",
                       settings=settings, pool_settings=pool_settings(site),
                       dead_letter_queues=dead_letter_queues(site)),
        context.python(f"{names.PRODUCER_MODULE}.py", "producer.py.j2",
                       producer=producer_module(site, settings)),
        context.text(names.env_file_name(site), "env.j2", "#", environment=_environment(
            site, config_dir)),
        *context.units(),
        RenderedFile(names.DEPLOYMENT_FILE,
                     _deployment(site, source, config_dir, versions, stamp)),
    ]
    if site.flower.enabled:
        options, flower_notes = drop_unknown(flower_options(site, context.state_dir), versions,
                                             "flower")
        notes.extend(flower_notes)
        files.append(context.python(names.FLOWER_CONFIG, "flowerconfig.py.j2", options=options))
    return Rendering(sorted(files, key=lambda f: f.path), notes)


class _Context:
    """Values every template shares, and the per-file rendering helpers."""

    def __init__(self, site: Site, source: str, config_dir: str,
                 versions: TargetVersions) -> None:
        self.site = site
        self.config_dir = config_dir
        self.state_dir = names.state_dir(site, config_dir)
        self.common = {"site": site, "source": source, "version": __version__,
                       "project": site.project, "systemd": site.systemd,
                       "scope": site.systemd.scope, "versions": versions}

    def text(self, path: str, template: str, comment: str, **values: Any) -> RenderedFile:
        return RenderedFile(path, _render(template, comment=comment, **self.common, **values))

    def python(self, path: str, template: str, **values: Any) -> RenderedFile:
        return self.text(path, template, "#", **values)

    def units(self) -> list[RenderedFile]:
        site = self.site
        units = [self._worker(worker) for worker in site.workers]
        if site.beat.enabled:
            units.append(self._service(names.beat_unit(site), f"{site.project} Celery beat",
                                       self._celery("beat", f"--schedule={self.state_dir}/"
                                                    f"{names.BEAT_SCHEDULE_FILE}",
                                                    "--loglevel=INFO"), {}, 60.0))
        if site.flower.enabled:
            env = {"FLOWER_BASIC_AUTH": flower_basic_auth(site)} if site.flower.auth else {}
            units.append(self._service(
                names.flower_unit(site), f"{site.project} Flower",
                self._celery("flower", f"--conf={self.config_dir}/{names.FLOWER_CONFIG}"),
                env, 30.0))
        target = names.target_unit(site)
        units.append(self.text(f"{names.UNIT_DIR}/{target}", "target.j2", "#",
                               description=f"{site.project} Celery fleet",
                               services=names.service_units(site)))
        return units

    def _worker(self, worker: Worker) -> RenderedFile:
        args = [f"--hostname={names.node_name(worker)}", f"--queues={','.join(worker.queues)}",
                f"--pool={worker.pool}", f"--loglevel={worker.log_level.upper()}", "-O", "fair"]
        if worker.disable_prefetch:
            args.append("--disable-prefetch")
        if worker.autoscale:
            args.append(f"--autoscale={worker.autoscale.max},{worker.autoscale.min}")
        else:
            args.append(f"--concurrency={worker.concurrency}")
        return self._service(
            names.worker_unit(self.site, worker),
            f"{self.site.project} Celery worker pool {worker.name}",
            self._celery("worker", *args, *worker.extra_args),
            {"CRATE_DEPLOY_POOL": worker.name}, stop_timeout(self.site, worker))

    def _celery(self, command: str, *args: str) -> list[str]:
        return [self.site.celery_executable, "-A", names.APP_MODULE, command, *args]

    def _service(self, name: str, description: str, argv: list[str], env: dict[str, str],
                 timeout: float) -> RenderedFile:
        return self.text(
            f"{names.UNIT_DIR}/{name}", "service.j2", "#", name=name.removesuffix(".service"),
            description=description, argv=argv, service_environment=env,
            stop_timeout=timeout, target=names.target_unit(self.site),
            env_file=f"{self.config_dir}/{names.env_file_name(self.site)}",
            **self._state_paths())

    def _state_paths(self) -> dict[str, Any]:
        default = f"/var/lib/{self.site.project}"
        if self.site.systemd.scope == "system" and self.state_dir == default:
            return {"state_directory": self.site.project, "read_write_paths": []}
        return {"state_directory": None, "read_write_paths": [self.state_dir]}


def _environment(site: Site, config_dir: str) -> dict[str, str]:
    """The non-secret environment: the site's, plus what makes the entry module importable."""
    environment = dict(site.environment)
    python_path = [config_dir, *filter(None, [environment.pop("PYTHONPATH", "")])]
    return {"PYTHONPATH": ":".join(python_path), "PYTHONUNBUFFERED": "1", **environment}


def _deployment(site: Site, source: str, config_dir: str, versions: TargetVersions,
                stamp: str | None) -> str:
    """What launch and status need to know about the rendered site, as JSON."""
    document = {
        "generated_by": f"crate-deploy {__version__}",
        "source": source,
        "config_dir": config_dir,
        "state_dir": names.state_dir(site, config_dir),
        "target": names.target_unit(site),
        "services": names.service_units(site),
        "versions": {"celery": versions.celery, "kombu": versions.kombu,
                     "flower": versions.flower, "source": versions.source, "stamp": stamp},
        "site": site.model_dump(mode="json"),
    }
    return json.dumps(document, indent=2) + "\n"


@cache
def _environment_jinja() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - we render config files, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(py=python_literal, unit_env=unit_assignment, unit_command=unit_command,
                       unit_text=unit_text, env_value=env_value, seconds=seconds)
    return env


def templates_dir() -> Path:
    """templates/ inside the installed package, or at the top of a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "templates", package.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise RenderError(f"the templates directory is missing (looked in {here})")


def _render(template: str, **values: Any) -> str:
    try:
        return _environment_jinja().get_template(template).render(**values)
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {template}: {exc}") from None


def python_literal(value: Any) -> str:
    """A Python literal for plain data, laid out one item a line; refuses anything repr()
    would not round-trip."""
    _check_literal(value)
    return _layout(value, 0)


def _layout(value: Any, level: int) -> str:
    inner, outer = "    " * (level + 1), "    " * level
    if isinstance(value, dict) and value:
        lines = [f"{inner}{key!r}: {_layout(item, level + 1)}," for key, item in value.items()]
        return "{\n" + "\n".join(lines) + f"\n{outer}}}"
    if isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        lines = [f"{inner}{_layout(item, level + 1)}," for item in value]
        return "[\n" + "\n".join(lines) + f"\n{outer}]"
    return repr(value)


def _check_literal(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_literal(key)
            _check_literal(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_literal(item)
    elif not isinstance(value, str | int | float | bool | type(None)):
        raise RenderError(f"cannot write {type(value).__name__} as a Python literal")
    elif isinstance(value, float) and not math.isfinite(value):
        raise RenderError(f"cannot write {value!r} as a Python literal")


def unit_text(value: str) -> str:
    """Free text in a unit line (Description=): only '%' is special there."""
    return value.replace("%", "%%")


def unit_word(value: str) -> str:
    """One word of a unit command line: quoted, with \\, ", % and $ escaped."""
    if value and set(value) <= _PLAIN:
        return value
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
               .replace("%", "%%").replace("$", "$$"))
    return f'"{escaped}"'


def unit_assignment(value: str) -> str:
    """A quoted Environment= assignment; '$' is not special there, '%' and quotes are."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def unit_command(argv: list[str]) -> str:
    return " ".join(unit_word(arg) for arg in argv)


def env_value(value: str) -> str:
    """A value in an EnvironmentFile=: single quotes keep everything literal."""
    if "'" not in value:
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace(
        "`", "\\`")
    return f'"{escaped}"'


def seconds(value: float) -> str:
    """A systemd time span: whole seconds, else milliseconds (never 0, which means "off")."""
    if value == int(value):
        return f"{int(value)}s"
    return f"{max(1, round(value * 1000))}ms"
