"""status's process fields ({state, pid, since}) from a real systemd (252, in a container).

status asks `systemctl show` for each unit; here that command runs inside a booted
container (nsenter), so the parsing is checked against systemd's real output for a
running and an inactive unit.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from crate_deploy.inspect import status
from tests.systemd_container import Container, container_available, skip_or_fail

pytestmark = pytest.mark.slow


def test_unit_state_from_a_real_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    if problem := container_available():
        skip_or_fail(problem)
    with Container() as container:
        container.write_file("/etc/systemd/system/cd-sleep.service",
                             "[Service]\nExecStart=/bin/sleep 600\n")
        container.systemctl("daemon-reload")
        container.systemctl("start", "cd-sleep.service")
        main_pid = int(container.unit_properties("cd-sleep.service", "MainPID")["MainPID"])

        def in_container(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
            assert args[0] == "systemctl"
            return container.run(args, check=False)

        # status's own `subprocess` only: container.run needs the real one.
        monkeypatch.setattr(status, "subprocess", SimpleNamespace(run=in_container))
        running = status._unit_state("cd-sleep.service", [])
        stopped = status._unit_state("cd-never-started.service", [])

    assert (running["state"], running["sub_state"], running["pid"]) == (
        "active", "running", main_pid)
    started = datetime.fromisoformat(running["since"])
    assert timedelta(0) <= datetime.now(timezone.utc) - started < timedelta(minutes=10)
    assert stopped == {"state": "inactive", "sub_state": "dead", "pid": None, "since": None}
