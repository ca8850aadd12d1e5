"""Run *by the target venv's interpreter* (never imported by crate-deploy): load the
application as its own processes do, and report its tasks and where each one goes.

    VENV/bin/python -c "$(cat app_report.py)" '{"app": ..., "site": {...}}'

Prints one JSON document on stdout: {"ok": true, "versions", "namespace", "tasks",
"unmatched_routes"} or {"ok": false, "error": the traceback's last lines}. The app's own
prints go to stderr, so they cannot corrupt the report. Uses only the standard library and
the application's Celery: this file must run on every Python and Celery the target has.
"""

from __future__ import annotations

import json
import sys
import traceback
from importlib import metadata
from typing import Any


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _queue_of(app: Any, task: Any, name: str) -> str:
    """Where app sends task `name`: the task's own queue option, else routes, else default."""
    options = {"queue": task.queue} if getattr(task, "queue", None) else {}
    return str(app.amqp.router.route(options, name)["queue"].name)


def _site_app(site: dict[str, Any]) -> Any:
    from celery import Celery

    app = Celery("crate-deploy-check", set_as_current=False)
    app.conf.update(task_routes=site["routes"], task_default_queue=site["default_queue"],
                    task_create_missing_queues=True)
    return app


def _report(request: dict[str, Any]) -> dict[str, Any]:
    from celery.app.utils import find_app

    app = find_app(request["app"])
    app.loader.import_default_modules()  # autodiscovery (Django's INSTALLED_APPS) happens here
    app.finalize(auto=True)
    site_app = _site_app(request["site"])
    names = sorted(name for name in app.tasks if not name.startswith("celery."))
    tasks = [{"name": name, "app_queue": _queue_of(app, app.tasks[name], name),
              "site_queue": _queue_of(site_app, app.tasks[name], name)} for name in names]
    from celery.app.routes import MapRoute

    unmatched = [pattern for pattern in request["site"]["routes"]
                 if not any(MapRoute({pattern: {"queue": "x"}})(name) for name in names)]
    return {"ok": True, "namespace": getattr(app, "namespace", None), "tasks": tasks,
            "unmatched_routes": unmatched}


def main() -> None:
    request = json.loads(sys.argv[1])
    stdout, sys.stdout = sys.stdout, sys.stderr
    versions = {name: _version(name) for name in ("celery", "kombu", "flower", "django")}
    try:
        report = _report(request)
    except BaseException:  # anything the application's import raises, SystemExit included
        lines = traceback.format_exc().strip().splitlines()
        report = {"ok": False, "error": "\n".join(lines[-6:])}
    report["versions"] = versions
    stdout.write(json.dumps(report) + "\n")
    stdout.flush()


if __name__ == "__main__":
    main()
