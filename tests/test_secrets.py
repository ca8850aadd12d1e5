"""Secrets stay secret: never in a rendered file, never in anything crate-deploy prints.

The site refers to three secrets by ${NAME}; the secrets file (mode 0600) holds their
values, chosen to be distinctive so that any leak, anywhere, is found by plain search.
Only the unreachable-broker case of `status` is used (127.0.0.1:1 refuses at once): it
needs no RabbitMQ.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crate_deploy.secrets import MASK, Masker
from tests.conftest import ROOT, Result

SECRETS = {
    "BROKER_PASSWORD": "Br0ker-PW-7f3a9",
    "REDIS_PASSWORD": "Red1s-PW-55c1",
    "FLOWER_PASSWORD": "Fl0wer-PW-e2d8",
}
SITE = """\
    project: demo
    app: demo.app
    celery: /usr/bin/celery
    secrets_file: secrets.env
    broker:
      urls: ["amqp://demo:${BROKER_PASSWORD}@127.0.0.1:5672//"]
    results:
      backend: "redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0"
    workers:
      - name: default
        queues: [celery]
    beat:
      enabled: true
    flower:
      enabled: true
      auth:
        - user: admin
          password: ${FLOWER_PASSWORD}
"""


def leaks(text: str | bytes) -> list[str]:
    """Every secret (or an encoding of it a tool might print) found in text."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    forms = {name: [value, quote(value, safe=""), base64.b64encode(value.encode()).decode(),
                    base64.b64encode(f"admin:{value}".encode()).decode()]
             for name, value in SECRETS.items()}
    return [name for name, values in forms.items()
            if any(form.encode() in data for form in values)]


def write_secrets(folder: Path, secrets: dict[str, str] = SECRETS, text: str | None = None,
                  ) -> Path:
    path = folder / "secrets.env"
    path.write_text(text if text is not None else "".join(
        f"{name}={value}\n" for name, value in secrets.items()), encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The site file, next to its secrets file; no secret is set in the environment."""
    for name in SECRETS:
        monkeypatch.delenv(name, raising=False)
    write_secrets(tmp_path)
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(SITE), encoding="utf-8")
    return path


def rendered_files(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def program(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in SECRETS}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "crate_deploy", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, check=False, timeout=60)


# --- rendering ----------------------------------------------------------------------------


def test_no_rendered_file_holds_a_secret(site: Path, run_cli: Callable[..., Result]) -> None:
    out = site.parent / "out"
    result = run_cli("render", site, "-o", out)
    assert result.code == 0, result.err
    assert leaks(result.out + result.err) == []
    files = rendered_files(out)
    assert {"systemd/demo-flower.service", "crate_deploy_celeryconfig.py", "demo.env",
            "deployment.json", "flowerconfig.py", ".crate-deploy-manifest.json"} <= set(files)
    for name, content in files.items():
        assert leaks(content) == [], f"{name} holds a secret"
    # The references are there instead, to be resolved at run time.
    config = files["crate_deploy_celeryconfig.py"].decode()
    assert "${BROKER_PASSWORD}" in config and "${REDIS_PASSWORD}" in config
    assert "admin:${FLOWER_PASSWORD}" in files["systemd/demo-flower.service"].decode()
    assert f"EnvironmentFile={site.parent / 'secrets.env'}" in files[
        "systemd/demo-worker-default.service"].decode()


def test_validate_prints_no_secret(site: Path, run_cli: Callable[..., Result]) -> None:
    result = run_cli("validate", site)
    assert result.code == 0, result.err
    assert leaks(result.out + result.err) == []


def test_render_diff_prints_no_secret(site: Path, run_cli: Callable[..., Result]) -> None:
    out = site.parent / "out"
    assert run_cli("render", site, "-o", out, "--diff").code == 0
    site.write_text(site.read_text().replace("queues: [celery]", "queues: [celery]\n"
                                             "    concurrency: 7"), encoding="utf-8")
    for args in (["--diff", "--check"], ["--diff"]):
        result = run_cli("render", site, "-o", out, *args)
        assert "--concurrency=7" in result.out
        assert leaks(result.out + result.err) == []




@pytest.mark.parametrize(("file", "old", "new"), [
    pytest.param("crate_deploy_celeryconfig.py", "${BROKER_PASSWORD}", SECRETS["BROKER_PASSWORD"],
                 id="broker-url"),
    pytest.param("crate_deploy_celeryconfig.py", "${REDIS_PASSWORD}", SECRETS["REDIS_PASSWORD"],
                 id="result-backend-url"),
    pytest.param("demo.env", "PYTHONUNBUFFERED='1'\n", "PYTHONUNBUFFERED='1'\n"
                 f"BROKER_PASSWORD={SECRETS['BROKER_PASSWORD']}\n", id="password-assignment"),
    pytest.param("systemd/demo-flower.service", "${FLOWER_PASSWORD}",
                 SECRETS["FLOWER_PASSWORD"], id="flower-basic-auth"),
    pytest.param("demo.env", "PYTHONUNBUFFERED='1'\n", "PYTHONUNBUFFERED='1'\n"
                 f"# rabbit: {SECRETS['BROKER_PASSWORD']}\n", id="note-in-a-comment"),
])
def test_render_diff_masks_a_password_pasted_into_a_rendered_file(
        site: Path, run_cli: Callable[..., Result], file: str, old: str, new: str) -> None:
    out = site.parent / "out"
    assert run_cli("render", site, "-o", out).code == 0
    edited = out / file
    text = edited.read_text(encoding="utf-8")
    assert old in text
    edited.write_text(text.replace(old, new), encoding="utf-8")
    for args in (["--diff", "--check"], ["--diff"]):
        result = run_cli("render", site, "-o", out, *args)
        assert f"changed  {edited}" in result.out, result.out
        assert "\n-" in result.out  # the diff shows the hand-edited line going away...
        assert leaks(result.out + result.err) == [], result.out  # ...masked
    assert leaks(edited.read_bytes()) == []  # and the render put the reference back


@pytest.mark.parametrize("breakage", [
    pytest.param("    user: Root\n", id="model-error"),
    pytest.param("    routes: {demo.tasks.*: nowhere}\n", id="cross-check-error"),
    pytest.param("    flower_typo: 1\n", id="unknown-key"),
])
def test_validation_errors_print_no_secret(site: Path, run_cli: Callable[..., Result],
                                           breakage: str) -> None:
    site.write_text(site.read_text() + textwrap.dedent(breakage), encoding="utf-8")
    out = site.parent / "out"
    for args in (["validate", site], ["render", site, "-o", out, "--diff"]):
        result = run_cli(*args)
        assert result.code == 2
        assert result.err.endswith("1 error(s): nothing was written\n")
        assert leaks(result.out + result.err) == []
    assert not out.exists()


# --- status against a broker that is not there ------------------------------------------


@pytest.fixture
def unreachable(site: Path, run_cli: Callable[..., Result]) -> Path:
    """A render whose broker is 127.0.0.1:1, where nothing listens: status fails at once."""
    site.write_text(site.read_text().replace("127.0.0.1:5672", "127.0.0.1:1"), encoding="utf-8")
    out = site.parent / "out"
    assert run_cli("render", site, "-o", out).code == 0
    return out


@pytest.mark.parametrize("args", [[], ["--json"]], ids=["text", "json"])
def test_status_masks_the_broker_url_when_the_broker_is_down(unreachable: Path,
                                                              args: list[str]) -> None:
    result = program("status", unreachable, *args, cwd=unreachable.parent)
    assert result.returncode == 1, result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert f"amqp://demo:{MASK}@127.0.0.1:1//" in output
    assert leaks(output) == []


@pytest.mark.parametrize("line", [
    f"BROKER_PASSWORD {SECRETS['BROKER_PASSWORD']}",  # a space for the '='
    f"{SECRETS['BROKER_PASSWORD']}",  # the value alone
], ids=["space-for-equals", "bare-value"])
def test_status_does_not_echo_a_malformed_secrets_file(unreachable: Path, line: str) -> None:
    write_secrets(unreachable.parent, text=f"REDIS_PASSWORD={SECRETS['REDIS_PASSWORD']}\n"
                  f"{line}\n")
    result = program("status", unreachable, cwd=unreachable.parent)
    assert result.returncode != 0
    assert "secrets file" in result.stderr
    assert leaks(result.stdout + result.stderr) == []


def test_a_password_with_url_delimiters_stays_in_the_password() -> None:
    from kombu.utils.url import parse_url

    from crate_deploy.site.model import Site
    from crate_deploy.state.deployment import broker_urls

    site = Site.model_validate({
        "project": "demo", "app": "demo.app", "celery": "/usr/bin/celery",
        "secrets_file": "/etc/demo/secrets.env",
        "broker": {"urls": ["amqp://demo:${BROKER_PASSWORD}@127.0.0.1:1//"]},
        "workers": [{"name": "default", "queues": ["celery"]}]})
    password = "Br0ker@PW/7f3a9:x#y"
    url = broker_urls(site, {"BROKER_PASSWORD": password})[0]
    parsed = parse_url(url)
    assert (parsed["hostname"], parsed["port"], parsed["password"]) == (
        "127.0.0.1", 1, password)


# --- the masker itself ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "masked"), [
    ("amqp://demo:s3cret-pw@127.0.0.1:5672//", f"amqp://demo:{MASK}@127.0.0.1:5672//"),
    ("redis://:s3cret-pw@127.0.0.1:6379/0", f"redis://:{MASK}@127.0.0.1:6379/0"),
    ("db+postgresql://u:p%40ss@db/x and more", f"db+postgresql://u:{MASK}@db/x and more"),
    ("BROKER_PASSWORD=s3cret-pw", f"BROKER_PASSWORD={MASK}"),
    ("export DB_SECRET='two words'", f"export DB_SECRET={MASK}"),
    ('API_TOKEN="tok en" next', f"API_TOKEN={MASK} next"),
    ("flower_password=s3cret-pw", f"flower_password={MASK}"),
])
def test_masker_masks_url_passwords_and_secret_assignments(text: str, masked: str) -> None:
    assert Masker()(text) == masked


@pytest.mark.parametrize("text", [
    "amqp://demo:${BROKER_PASSWORD}@127.0.0.1:5672//",
    "redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0",
    "BROKER_PASSWORD=${BROKER_PASSWORD}",
    "FLOWER_BASIC_AUTH=admin:${FLOWER_PASSWORD}",
    'FLOWER_PASSWORD="${FLOWER_PASSWORD}"',
    "amqp://demo@127.0.0.1:5672// (no password at all)",
    "PYTHONPATH=/etc/demo",
])
def test_masker_leaves_references_and_plain_text_visible(text: str) -> None:
    assert Masker(SECRETS.values())(text) == text


def test_masker_masks_known_values_anywhere() -> None:
    mask = Masker(SECRETS.values())
    text = (f"connection to 127.0.0.1 refused for {SECRETS['BROKER_PASSWORD']}; "
            f"user admin:{SECRETS['FLOWER_PASSWORD']}, {SECRETS['REDIS_PASSWORD']}!")
    assert mask(text) == f"connection to 127.0.0.1 refused for {MASK}; user admin:{MASK}, {MASK}!"
    # Longest first: a secret that contains another is masked whole.
    assert Masker(["abcd", "abcdefgh"])("xabcdefghx") == f"x{MASK}x"


SECRET_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="*"),
                      min_size=4, max_size=30)


@given(secret=SECRET_TEXT, before=st.text(max_size=30), after=st.text(max_size=30))
def test_a_known_secret_never_survives_the_masker(secret: str, before: str, after: str) -> None:
    masked = Masker([secret])(before + secret + after)
    assert secret not in masked
    assert Masker([secret])(masked) == masked  # masking twice changes nothing more


@given(user=st.from_regex(r"[a-z][a-z0-9_-]{0,15}", fullmatch=True),
       password=st.from_regex(r"[A-Za-z0-9._~!$&()*+,;=%-]{1,40}", fullmatch=True),
       scheme=st.sampled_from(["amqp", "amqps", "redis", "rediss", "db+postgresql", "sqs"]))
def test_a_url_password_never_survives_the_masker(user: str, password: str, scheme: str) -> None:
    url = f"{scheme}://{user}:{password}@127.0.0.1:5672/vhost"
    masked = Masker()(f"cannot connect to {url}: refused")
    if password.startswith("${") or password == MASK:
        return
    assert masked == f"cannot connect to {scheme}://{user}:{MASK}@127.0.0.1:5672/vhost: refused"


# --- an empty Flower password ------------------------------------------------------------


def test_launch_refuses_an_empty_flower_password(unreachable: Path) -> None:
    """`FLOWER_PASSWORD=` would let anyone in as admin with an empty password."""
    write_secrets(unreachable.parent, {**SECRETS, "FLOWER_PASSWORD": ""})
    result = program("launch", unreachable, cwd=unreachable.parent)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "flower.auth[0] (admin): the password ${FLOWER_PASSWORD} is empty" in result.stderr
    assert "Traceback" not in result.stderr
    assert leaks(result.stdout + result.stderr) == []


def test_a_secrets_file_that_is_not_utf8_is_one_clear_line(unreachable: Path) -> None:
    secrets = unreachable.parent / "secrets.env"
    secrets.write_bytes(b"BROKER_PASSWORD=Br0ker-PW-\xe97f3a9\nREDIS_PASSWORD=x\n")
    result = program("status", unreachable, cwd=unreachable.parent)
    assert result.returncode == 1
    assert result.stderr == (f"crate-deploy: error: the secrets file {secrets} is not UTF-8 "
                             "text (byte 27 cannot be read): save it as UTF-8\n")
