"""Every ${NAME} must be defined in the secrets file when this user can read it; the
messages name the keys, never a value."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from crate_deploy.site.load import load_site
from crate_deploy.site.model import Site
from crate_deploy.site.references import check_references
from crate_deploy.site.validate import validate_file
from tests.conftest import Result
from tests.site.test_validate import messages

SECRET = "s3cret-value-never-printed"
SITE = """\
    project: demo
    app: demo.app
    celery: {celery}
    secrets_file: secrets.env
    broker:
      urls: ["amqp://demo:${{BROKER_PASSWORD}}@127.0.0.1:5672/demo"]
    workers:
      - name: default
        queues: [celery]
    flower:
      enabled: true
      auth:
        - user: admin
          password: ${{FLOWER_PASWORD}}
    """


@pytest.fixture
def site(write_site: Callable[..., Path], tmp_path: Path) -> Path:
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"BROKER_PASSWORD={SECRET}\nFLOWER_PASSWORD={SECRET}x\n")
    secrets.chmod(0o600)
    return write_site(SITE.format(celery="/usr/bin/celery"))


def test_a_misspelt_reference_is_an_error_at_its_line_with_a_suggestion(
        site: Path, run_cli: Callable[..., Result]) -> None:
    result = run_cli("validate", site)
    assert result.code == 2
    secrets = site.parent / "secrets.env"
    assert result.err.splitlines() == [
        f"{site}:14:7: flower.auth[0].password: ${{FLOWER_PASWORD}} is not defined in the "
        f"secrets file {secrets}; did you mean FLOWER_PASSWORD?",
        "1 error(s): nothing was written",
    ]
    assert SECRET not in result.err + result.out


def test_without_a_close_name_the_defined_names_are_listed(site: Path) -> None:
    site.write_text(site.read_text().replace("FLOWER_PASWORD", "WEB_LOGIN"))
    assert messages(site)[0].endswith(
        "${WEB_LOGIN} is not defined in the secrets file "
        f"{site.parent / 'secrets.env'} (it defines: BROKER_PASSWORD, FLOWER_PASSWORD)")


def test_defined_references_pass(site: Path) -> None:
    site.write_text(site.read_text().replace("FLOWER_PASWORD", "FLOWER_PASSWORD"))
    assert validate_file(site).warnings == []


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to nobody, which needs root")
def test_an_unreadable_secrets_file_is_a_warning_not_an_error(site: Path) -> None:
    """Root reads any file: look at the (root-only) secrets file as nobody would."""
    site.write_text(site.read_text().replace("FLOWER_PASWORD", "NOT_DEFINED"))
    resolved = Site.model_validate(load_site(site).data).model_copy(
        update={"secrets_file": str(site.parent / "secrets.env")})
    os.setegid(65534)
    os.seteuid(65534)
    try:
        found = list(check_references(resolved))
    finally:
        os.seteuid(0)
        os.setegid(0)
    assert found == [(("secrets_file",), f"{site.parent / 'secrets.env'} cannot be read by "
                      "this user (Permission denied), so the ${...} references were not "
                      "checked: run validate as a user who can read it (root) to check them",
                      "warning")]


def test_a_missing_secrets_file_for_another_server_says_nothing(
        write_site: Callable[..., Path]) -> None:
    path = write_site(SITE.format(celery="/srv/elsewhere/bin/celery"))
    assert validate_file(path).warnings == []


def test_a_missing_secrets_file_where_celery_is_installed_is_a_warning(
        write_site: Callable[..., Path]) -> None:
    path = write_site(SITE.format(celery="/usr/bin/env"))
    assert [str(w).split(": ", 1)[1] for w in validate_file(path).warnings] == [
        f"secrets_file: warning: {path.parent / 'secrets.env'} does not exist: the services "
        "cannot start without it (KEY=value lines, mode 0600)"]


def test_a_malformed_secrets_file_names_the_line_not_the_value(site: Path) -> None:
    (site.parent / "secrets.env").write_text(f"BROKER_PASSWORD={SECRET}\nexport X={SECRET}\n")
    found = messages(site)
    assert found == [f"4:1: secrets_file: {site.parent / 'secrets.env'} is malformed at line "
                     "2: write KEY=value lines (the services could not start)"]
    assert SECRET not in "".join(found)
