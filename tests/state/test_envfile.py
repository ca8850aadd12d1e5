"""One reader of environment files (state/envfile.py) for launch's processes and for the
secrets every command needs: the same errors, a malformed line named by its number only
(the line may hold a secret)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from crate_deploy.errors import LaunchError
from crate_deploy.plan.services import Service, build_plan
from crate_deploy.run.specs import service_environment
from crate_deploy.site.model import Site
from crate_deploy.state.deployment import read_secrets
from crate_deploy.state.envfile import EnvironmentFileError, read_environment_file

SECRET = "Br0ker-PW-7f3a9"


def site_with(secrets: Path) -> Site:
    return Site.model_validate({
        "project": "demo", "app": "demo.app", "celery": "/usr/bin/celery",
        "secrets_file": str(secrets),
        "broker": {"urls": ["amqp://demo:${BROKER_PASSWORD}@127.0.0.1:1//"]},
        "workers": [{"name": "default", "queues": ["celery"]}]})


def service_reading(path: Path) -> Service:
    return replace(build_plan(site_with(path), "/etc/demo", None).services[0],
                   env_files=(str(path),))


def both_callers(path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What read_secrets (status, launch ...) and a launched service's environment say."""
    monkeypatch.delenv("BROKER_PASSWORD", raising=False)
    said = []
    for read in (lambda: read_secrets(site_with(path)),
                 lambda: service_environment(service_reading(path), {})):
        with pytest.raises(LaunchError) as caught:
            read()
        said.append(str(caught.value))
    return said


def test_a_malformed_line_is_named_by_number_by_both(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secrets.env"
    path.write_text(f"REDIS_PASSWORD=x\nBROKER_PASSWORD {SECRET}\n")
    secrets, service = both_callers(path, monkeypatch)
    assert secrets == f"the secrets file {path} is malformed at line 2: write KEY=value lines"
    assert service == (f"demo-worker-default: the environment file {path} is malformed at "
                       "line 2: write KEY=value lines")
    assert SECRET not in secrets + service


def test_not_utf8_and_unreadable_in_the_same_words(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secrets.env"
    path.write_bytes(b"BROKER_PASSWORD=Br0ker-PW-\xe97f3a9\n")
    secrets, service = both_callers(path, monkeypatch)
    assert secrets == (f"the secrets file {path} is not UTF-8 text (byte 27 cannot be read): "
                       "save it as UTF-8")
    assert service == (f"demo-worker-default: the environment file {path} is not UTF-8 text "
                       "(byte 27 cannot be read): save it as UTF-8")
    missing = tmp_path / "nope.env"
    secrets, service = both_callers(missing, monkeypatch)
    assert secrets == (f"cannot read the secrets file {missing} (No such file or directory); "
                       "run as a user who can, or set the variables it holds in the environment")
    assert service == (f"demo-worker-default: cannot read the environment file {missing} (No "
                       "such file or directory); render again")


def test_the_reader_says_which_kind_of_failure(tmp_path: Path) -> None:
    path = tmp_path / "x.env"
    path.write_text("A=1\n# a comment\nB='two words'\n")
    assert read_environment_file(path, "the file") == {"A": "1", "B": "two words"}
    with pytest.raises(EnvironmentFileError) as caught:
        read_environment_file(tmp_path / "nope.env", "the file")
    assert caught.value.unreadable and caught.value.missing
    path.write_text("not a pair\n")
    with pytest.raises(EnvironmentFileError) as caught:
        read_environment_file(path, "the file")
    assert not caught.value.unreadable
