"""What a render left for launch, stop and status: deployment.json, and the site's secrets.

Secrets are read here, at run time, from the site's secrets_file (or the
environment); every caller prints through a Masker that knows their values.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pydantic import ValidationError

from crate_deploy.errors import LaunchError, UsageError
from crate_deploy.plan.names import (
    APP_MODULE,
    CONFIG_MODULE,
    DEPLOYMENT_FILE,
    FLOWER_CONFIG,
    LAUNCH_STATE_FILE,
    PRODUCER_MODULE,
    SITE_PATH_FILE,
    UNIT_DIR,
    env_file_name,
)
from crate_deploy.plan.placement import runs_flower
from crate_deploy.plan.restarts import shared_config_files
from crate_deploy.secrets import Masker
from crate_deploy.site.fields import SECRET_REFERENCE
from crate_deploy.site.model import Site
from crate_deploy.state.envfile import EnvironmentFileError, read_environment_file


@dataclass(frozen=True)
class Deployment:
    """A rendered directory as launch, status and stop read it back: the site it was
    rendered from, where its services read their config and keep their state."""

    directory: Path
    site: Site
    config_dir: str
    state_dir: str
    target: str
    services: list[str]
    host: str | None = None  # whose share of a site with hosts: this render is


    @property
    def unit_dir(self) -> Path:
        """Where render put the unit files."""
        return self.directory / UNIT_DIR

    @property
    def units(self) -> list[str]:
        return [self.target, *self.services]

    @property
    def config_files(self) -> list[str]:
        """The files in config_dir, by name; all but deployment.json are read by services."""
        names = [f"{APP_MODULE}.py", f"{CONFIG_MODULE}.py", f"{PRODUCER_MODULE}.py",
                 env_file_name(self.site), DEPLOYMENT_FILE]
        if runs_flower(self.site, self.host):
            names.append(FLOWER_CONFIG)
        return names

    @property
    def shared_files(self) -> set[str]:
        """Config every service reads: a change to one restarts them all."""
        return shared_config_files(self.site)

    @property
    def launch_state(self) -> Path:
        return self.directory / LAUNCH_STATE_FILE


def load_deployment(directory: Path) -> Deployment:
    path = directory / DEPLOYMENT_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        site = Site.model_validate(document["site"])
        config_dir = str(document["config_dir"]).rstrip("/") or "/"
        host = document.get("host")
        return Deployment(directory.resolve(), site, config_dir, document["state_dir"],
                          document["target"], [str(name) for name in document["services"]],
                          None if host is None else str(host))
    except FileNotFoundError:
        if (directory / "hosts").is_dir():  # render --all-hosts: one share per host below
            raise UsageError(f"{directory} holds every host's share (render --all-hosts): "
                             f"give one, {directory}/hosts/HOST") from None
        raise UsageError(f"no rendered site in {directory}: run `crate-deploy render SITE "
                         f"-o {directory}` first") from None
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        raise UsageError(f"{path} is unreadable ({type(exc).__name__}): render again") from None


def read_secrets(site: Site) -> dict[str, str]:
    """The values of every ${REFERENCE} the site uses, from the secrets_file or environment.

    systemd gives the services the secrets file; an operator running `status` may not
    be able to read it (root-only), so a variable set in the environment wins.
    """
    names = _referenced_names(site)
    values: dict[str, str] = {}
    if site.secrets_file and names - set(os.environ):
        try:
            values = read_environment_file(Path(site.secrets_file), "the secrets file")
        except EnvironmentFileError as exc:
            if not exc.unreadable:
                raise
            raise LaunchError(f"{exc}; run as a user who can, or set the variables it holds "
                              "in the environment") from None
    values.update({name: os.environ[name] for name in names if name in os.environ})
    return values


def resolve(text: str, secrets: dict[str, str], where: str) -> str:
    """Fill ${NAME} references in text; a missing one names the variable, never a value."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in secrets:
            raise LaunchError(f"{where} refers to ${{{name}}}, which is neither in the "
                              "secrets_file nor in the environment")
        return secrets[name]

    return SECRET_REFERENCE.sub(lookup, text)


def broker_urls(site: Site, secrets: dict[str, str]) -> list[str]:
    # Percent-encoded: a password with '@', '/' or ':' must not move the host.
    encoded = {name: quote(value, safe="") for name, value in secrets.items()}
    return [resolve(url, encoded, f"broker.urls[{index}]")
            for index, url in enumerate(site.broker.urls)]


def flower_credentials(site: Site, secrets: dict[str, str]) -> tuple[str, str] | None:
    """The first Flower user and password, to check that auth is really enforced."""
    if not site.flower.auth:
        return None
    user = site.flower.auth[0]
    return user.user, resolve(user.password, secrets, "flower.auth[0].password")


def check_flower_passwords(site: Site, secrets: dict[str, str]) -> None:
    """Refuse a Flower user whose password resolves to nothing: Flower would let anyone
    in with that user name and an empty password (`curl -u admin:`)."""
    if not site.flower.enabled:
        return
    for index, user in enumerate(site.flower.auth):
        if not resolve(user.password, secrets, f"flower.auth[{index}].password"):
            raise LaunchError(f"flower.auth[{index}] ({user.user}): the password "
                              f"{user.password} is empty; set it in the secrets_file "
                              f"{site.secrets_file} (Flower would accept an empty password "
                              "from anyone)")


def masker_for(secrets: dict[str, str]) -> Masker:
    return Masker(secrets.values())


def secrets_file_warning(site: Site) -> str | None:
    """A warning when the secrets file can be read by other users."""
    if not site.secrets_file:
        return None
    try:
        mode = Path(site.secrets_file).stat().st_mode & 0o777
    except OSError:
        return None
    if mode & 0o077:
        return (f"the secrets file {site.secrets_file} is readable by others (mode "
                f"{mode:04o}); chmod 600 it")
    return None


def _referenced_names(site: Site) -> set[str]:
    texts = [*site.broker.urls, site.results.backend or "",
             *(user.password for user in site.flower.auth)]
    return {name for text in texts for name in SECRET_REFERENCE.findall(text)}


def recorded_site_path(directory: Path) -> Path | None:
    """The site file the last render read, if it noted one (and it is a plain file)."""
    path = directory / SITE_PATH_FILE
    if path.is_symlink():
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return Path(text) if text.startswith("/") and "\n" not in text else None
