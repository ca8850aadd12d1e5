"""Per-service logs: what a foreground launch writes, and `crate-deploy logs`.

A foreground launch prints every service's output to its terminal and also appends
it, masked, to DIR/logs/SERVICE.log (directory 0700, files 0600, opened without
following symlinks), one `ISO-TIME text` line each, with the supervisor's own lines
about that service (started, exited, stopping). A file over 10 MiB is moved to
SERVICE.log.1 when a launch opens it. Under systemd the journal holds the same:
`crate-deploy logs` reads whichever this directory's fleet uses.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

import click

from crate_deploy.errors import LaunchError, UsageError
from crate_deploy.run.control import resolve_services
from crate_deploy.run.install import manager_problem, unit_dir
from crate_deploy.run.policy import LinePrinter, TextSink
from crate_deploy.secrets import Masker
from crate_deploy.state.deployment import Deployment, load_deployment, masker_for, read_secrets
from crate_deploy.state.launch import launcher_pid

LOG_DIR = "logs"
ROTATE_BYTES = 10 * 1024 * 1024
_FOLLOW_POLL_SEC = 0.25


def log_path(deployment: Deployment, service: str) -> Path:
    return deployment.directory / LOG_DIR / f"{service}.log"


class LoggingPrinter(LinePrinter):
    """A LinePrinter that also appends each service's lines to its log file, masked."""

    def __init__(self, sink: TextSink, names: Iterable[str], deployment: Deployment,
                 mask: Masker, services: Sequence[str]) -> None:
        super().__init__(sink, names)
        self._mask, self._files_lock = mask, threading.Lock()
        self._files = _open_logs(deployment, services)

    def line(self, name: str, text: str) -> None:
        super().line(name, text)
        # The supervisor's own lines ("system") go to the service they are about.
        service = name if name in self._files else _about(text, self._files)
        if service is not None:
            stamp = datetime.now().astimezone().isoformat(timespec="milliseconds")
            with self._files_lock:
                os.write(self._files[service], f"{stamp} {self._mask(text)}\n".encode())

    def close(self) -> None:
        with self._files_lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()


def _about(text: str, services: Iterable[str]) -> str | None:
    """The service a supervisor line is about ("NAME started", "stopping NAME: ...")."""
    words = text.split(maxsplit=2)
    for word in words[:2]:
        if (name := word.rstrip(":")) in services:
            return name
    return None


def _open_logs(deployment: Deployment, services: Sequence[str]) -> dict[str, int]:
    directory = deployment.directory / LOG_DIR
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    if directory.is_symlink() or not directory.is_dir():
        raise LaunchError(f"{directory} is not a directory: remove it")
    directory.chmod(0o700)
    files = {}
    for service in services:
        path = log_path(deployment, service)
        with contextlib.suppress(FileNotFoundError):
            if path.lstat().st_size > ROTATE_BYTES:
                path.replace(path.with_name(path.name + ".1"))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise LaunchError(f"cannot open the log file {path}: {exc.strerror}") from None
        os.fchmod(fd, 0o600)
        files[service] = fd
    return files


# --- `crate-deploy logs` ----------------------------------------------------------------


def logs_command(directory: Path, wanted: Sequence[str], *, follow: bool, lines: int) -> int:
    deployment = load_deployment(directory)
    services = resolve_services(deployment, wanted)
    if launcher_pid(deployment) is None and _journal_available(deployment):
        return _journal(deployment, services, follow=follow, lines=lines)
    paths = {service: log_path(deployment, service) for service in services}
    if not any(path.exists() for path in paths.values()):
        raise UsageError(f"no logs for {', '.join(services)} in {directory / LOG_DIR}: "
                         "a foreground `crate-deploy launch` writes them")
    width = max(len(service) for service in services)
    # Where -f goes on from, taken first: a line written meanwhile is shown once, later.
    positions = {service: _size(path) for service, path in paths.items()}
    for stamp, service, text in heapq.merge(*(_last_lines(path, service, lines,
                                                          positions[service])
                                              for service, path in paths.items())):
        click.echo(f"{stamp} {service.ljust(width)} | {text}")
    if not follow:
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            for service, path in paths.items():
                for stamp, text in _new_lines(path, positions, service):
                    click.echo(f"{stamp} {service.ljust(width)} | {text}")
            sys.stdout.flush()
            time.sleep(_FOLLOW_POLL_SEC)
    return 0


def _split(line: str) -> tuple[str, str]:
    stamp, _, text = line.rstrip("\n").partition(" ")
    return stamp, text


def _last_lines(path: Path, service: str, count: int,
                upto: int) -> Iterator[tuple[str, str, str]]:
    tail: deque[str] = deque(maxlen=max(count, 0))
    tail.extend(_read(path, 0, upto).decode("utf-8", "replace").splitlines())
    for line in tail:
        stamp, text = _split(line)
        yield stamp, service, text


def _new_lines(path: Path, positions: dict[str, int], service: str) -> list[tuple[str, str]]:
    size = _size(path)
    if size < positions[service]:  # rotated or truncated by a new launch: from the top
        positions[service] = 0
    if size == positions[service]:
        return []
    data = _read(path, positions[service], size - positions[service])
    complete = data[:data.rfind(b"\n") + 1]  # a line still being written waits
    positions[service] += len(complete)
    return [_split(line) for line in complete.decode("utf-8", "replace").splitlines()]


def _read(path: Path, offset: int, length: int) -> bytes:
    """length bytes of path from offset, never through a symlink; b"" if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _journal_available(deployment: Deployment) -> bool:
    user = deployment.site.systemd.scope == "user"
    installed = (Path(unit_dir(user)) / deployment.services[0]).is_file()
    return installed and manager_problem(user) is None


def _journal(deployment: Deployment, services: Sequence[str], *, follow: bool,
             lines: int) -> int:
    """journalctl for these units, masked as the rest of crate-deploy's output is."""
    user = deployment.site.systemd.scope == "user"
    argv = ["journalctl", *(["--user"] if user else []), "--no-pager", "-n", str(lines),
            *(["-f"] if follow else []), *(f"--unit={name}.service" for name in services)]
    try:
        mask = masker_for(read_secrets(deployment.site))
    except LaunchError:
        mask = Masker()  # the journal is root's (or adm's) to read anyway
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                click.echo(mask(line.rstrip("\n")))
        except KeyboardInterrupt:
            proc.terminate()
    return 0 if proc.returncode in (0, -15) else 1

