"""The processes a foreground launch runs, straight from the process plan.

What systemd would give each service: a clean environment (little more than PATH and
LANG, `base_env`), then the service's own variables, then each environment file in
order (later files win), its working directory (/ when none is set), user, stop signal
and timeout, restart policy and start limit.  A test keeps this equal to what the
rendered unit says, read back the way systemd reads it.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from pathlib import Path
from typing import cast, get_args

from crate_deploy.errors import LaunchError
from crate_deploy.plan.services import Service
from crate_deploy.run.policy import ProcessSpec
from crate_deploy.state.envfile import EnvironmentFileError, read_environment_file
from crate_deploy.systemd.units import RestartPolicy


def process_spec(service: Service, base_env: Mapping[str, str]) -> ProcessSpec:
    if service.restart not in get_args(RestartPolicy):
        raise LaunchError(f"{service.name}: unknown restart policy {service.restart!r}")
    return ProcessSpec(
        name=service.name,
        argv=list(service.argv),
        env=service_environment(service, base_env),
        cwd=Path(service.working_directory or "/"),  # where systemd starts a system service
        restart=cast(RestartPolicy, service.restart),
        restart_sec=service.restart_sec,
        timeout_stop_sec=service.stop_timeout,
        kill_signal=int(signal.Signals[service.stop_signal]),
        start_limit_burst=service.start_limit_burst,
        start_limit_interval_sec=service.start_limit_interval,
        kill_mode="mixed",
        user=service.user,
        group=service.group,
        umask=service.umask,
    )


def service_environment(service: Service, base_env: Mapping[str, str]) -> dict[str, str]:
    environment = {**base_env, **service.environment}
    for name in service.env_files:
        try:
            environment.update(read_environment_file(Path(name), "the environment file"))
        except EnvironmentFileError as exc:
            hint = "; render again" if exc.missing else ""
            raise LaunchError(f"{service.name}: {exc}{hint}") from None
    for name in service.unset_environment:  # UnsetEnvironment=: applied last, as systemd does
        environment.pop(name, None)
    return environment
