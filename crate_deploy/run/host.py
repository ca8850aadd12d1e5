"""A host's share runs on that host only: its nodes carry the host's name (POOL@HOST),
so the same share started on a second machine would give two workers one node name."""

from __future__ import annotations

import socket

from crate_deploy.errors import LaunchError
from crate_deploy.state.deployment import Deployment


def check_this_host(deployment: Deployment) -> None:
    """Refuse to start a host's share on a machine with another host name."""
    if deployment.host is None:
        return
    here = socket.gethostname()
    if not same_host(here, deployment.host):
        raise LaunchError(f"{deployment.directory} is the share of host {deployment.host}, but "
                          f"this machine is {here}: its workers would take {deployment.host}'s "
                          f"node names; launch it on {deployment.host}, or render this "
                          f"machine's share with `render --host {here}`")


def same_host(here: str, name: str) -> bool:
    """Host names ignore case, and a machine may know itself by its short name only
    (web1 for web1.example.org), or the site may give the short name."""
    here, name = here.lower(), name.lower()
    if here == name:
        return True
    if "." in here and "." in name:
        return False
    return here.split(".")[0] == name.split(".")[0]
