"""validate.py and checks.py: every problem at once, with file:line:column, key and a fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from crate_deploy.errors import SiteError
from crate_deploy.site.validate import validate_file
from tests.conftest import EXAMPLES, MINIMAL


def messages(path: Path) -> list[str]:
    with pytest.raises(SiteError) as caught:
        validate_file(path)
    return [str(problem).removeprefix(f"{path}:") for problem in caught.value.problems]


def errors(path: Path) -> list[str]:
    return [message for message in messages(path) if ": warning: " not in message]


@pytest.mark.parametrize("name", ["minimal.yaml", "site.yaml", "demo/site.yaml"])
def test_examples_are_valid(name: str) -> None:
    validated = validate_file(EXAMPLES / name)
    assert validated.site.workers


def test_model_errors_are_all_reported_with_positions(write_site: Callable[..., Path]) -> None:
    path = write_site("""\
        project: Demo
        app: demo.app
        celery: /usr/bin/celery
        broker:
          urls: ["amqp://u:hunter2@127.0.0.1:5672//"]
        workers:
          - name: default
            queues: [celery]
            concurency: 4
            pool: forking
          - name: other
            queues: [celery]
            concurrency: 0
        flower:
          enabled: true
          auth:
            - user: admin
              password: hunter2
        """)
    assert messages(path) == [
        "1:1: project: must start with a lowercase letter and use only a-z, 0-9, '_' and '-' "
        "(at most 40 characters)",
        "5:10: broker.urls[0]: holds a literal password: write ${NAME} instead and put "
        "NAME=the-password in the secrets_file",
        "9:5: workers[0].concurency: unknown key 'concurency'; did you mean 'concurrency'?",
        "10:5: workers[0].pool: must be one of: 'prefork', 'threads', 'solo', 'gevent' or "
        "'eventlet'",
        "13:5: workers[1].concurrency: must be >= 1",
        "18:7: flower.auth[0].password: must be a reference like ${FLOWER_PASSWORD} to a "
        "variable in the secrets_file, never the password itself",
    ]


def test_unknown_key_without_a_close_match_lists_the_allowed_keys(
        write_site: Callable[..., Path]) -> None:
    path = write_site(MINIMAL + "    results:\n      colour: blue\n")
    assert messages(path) == [
        "10:3: results.colour: unknown key 'colour'; allowed here: backend, expires"]


def test_cross_checks(write_site: Callable[..., Path]) -> None:
    path = write_site("""\
        project: demo
        app: demo.app
        celery: /usr/bin/celery
        broker:
          urls: ["amqp://u:${BP}@127.0.0.1:5672//", "redis://127.0.0.1:6379/0"]
        queues:
          - name: celery
            type: quorum
          - name: celery
          - name: idle
        routes:
          demo.tasks.*: elsewhere
        workers:
          - name: default
            queues: [celery, nowhere]
            autoscale: {min: 2, max: 8}
            soft_time_limit: 60
            time_limit: 30
            extra_args: ["--concurrency=9", "-B"]
          - name: threads
            queues: [celery]
            pool: threads
            max_tasks_per_child: 10
            time_limit: 5
          - name: default
            queues: [celery]
            pool: solo
            concurrency: 2
        flower:
          enabled: true
          address: 0.0.0.0
          port: 5672
        systemd:
          stop_timeout: 10
        """)
    assert messages(path) == [
        "1:1: secrets_file: the site references ${...} secrets: name the file that holds them "
        "(KEY=value lines, mode 0600) in secrets_file",
        "5:45: broker.urls[1]: uses redis:// but urls[0] uses amqp://; failover URLs must share "
        "one transport",
        "9:5: queues[1].name: 'celery' is already used by queues[0]; names must be unique",
        "12:3: routes.demo.tasks.*: routes to undeclared queue 'elsewhere'; declare it under "
        "queues (declared: celery, idle)",
        "15:22: workers[0].queues[1]: queue 'nowhere' is not declared; declare it under queues "
        "(declared: celery, idle)",
        "16:5: workers[0].autoscale: autoscale needs global QoS, which quorum queues do not "
        "support: use a fixed concurrency",
        "17:5: workers[0].soft_time_limit: must be less than time_limit (30) so the task can "
        "clean up before it is killed",
        "19:18: workers[0].extra_args[0]: --concurrency is set by crate-deploy from "
        "concurrency; remove it here",
        "19:37: workers[0].extra_args[1]: -B is set by crate-deploy from beat (use the beat "
        "section: one beat per site); remove it here",
        "23:5: workers[1].max_tasks_per_child: the threads pool ignores max_tasks_per_child; "
        "remove it or use pool: prefork",
        "24:5: workers[1].time_limit: the threads pool cannot enforce time limits; remove "
        "time_limit or use pool: prefork",
        "25:5: workers[2].name: 'default' is already used by workers[0]; names must be unique",
        "28:5: workers[2].concurrency: the solo pool runs one task at a time: set "
        "concurrency: 1 or use another pool",
        "31:3: flower.address: Flower on 0.0.0.0 without auth would let anyone who can reach "
        "it run and revoke tasks: add flower.auth, bind to 127.0.0.1, or set "
        "insecure_no_auth: true",
        "32:3: flower.port: port 5672 is already used by broker.urls[0]",
        "34:3: systemd.stop_timeout: 10s is not longer than workers[0].time_limit (30s): "
        "systemd would kill tasks still running on stop",
        "10:5: queues[2].name: warning: no worker pool consumes queue 'idle': tasks sent to it "
        "will wait forever",
    ]


def test_flower_off_loopback_is_allowed_when_marked_insecure(
        write_site: Callable[..., Path]) -> None:
    path = write_site(MINIMAL + "    flower: {enabled: true, address: 0.0.0.0, "
                                "insecure_no_auth: true}\n")
    assert validate_file(path).site.flower.insecure_no_auth


def test_relative_paths_resolve_against_the_site_file(write_site: Callable[..., Path],
                                                      tmp_path: Path) -> None:
    path = write_site(MINIMAL.replace("celery: /usr/bin/celery", "venv: ../venv")
                      .replace("    app: demo.app\n", "    app: demo.app\n    celery: x\n"))
    assert errors(path) == ["4:1: venv: give exactly one of venv (the application's "
                            "virtualenv) or celery (the path of its celery program)"]
    path = write_site(MINIMAL.replace("celery: /usr/bin/celery", "venv: ../venv"))
    assert validate_file(path).site.venv == str(tmp_path.parent / "venv")


@pytest.mark.parametrize("hostile", [
    "a\nExecStartPre=/bin/rm", "a%n", "a$b", 'a"b', "a'b", "a\\b", "../etc", "a b", "",
])
def test_hostile_names_are_refused(write_site: Callable[..., Path], hostile: str) -> None:
    import json

    path = write_site(MINIMAL.replace("name: default", f"name: {json.dumps(hostile)}"))
    assert messages(path)[0].startswith("7:5: workers[0].name: must start with a lowercase")


def test_rabbitmq_only_keys_are_refused_on_a_redis_broker(
        write_site: Callable[..., Path]) -> None:
    """On Redis they would change nothing while the site reads as if it had them."""
    site = """\
        project: demo
        app: demo.app
        celery: /usr/bin/celery
        broker:
          urls: ["redis://127.0.0.1:6379/0"]
          confirm_publish: true
        default_queue_type: quorum
        queues:
          - name: mail
            type: quorum
            delivery_limit: 5
            dead_letter: true
        workers:
          - name: default
            queues: [mail]
        """
    assert errors(write_site(site)) == [
        "6:3: broker.confirm_publish: the broker is redis://, which has no publisher "
        "confirms; remove it (RabbitMQ only)",
        "7:1: default_queue_type: the broker is redis://, which has no queue types; "
        "remove it (RabbitMQ only)",
        "10:5: queues[0].type: the broker is redis://, which has no quorum queues; remove it "
        "(RabbitMQ only)",
        "11:5: queues[0].delivery_limit: the broker is redis://, which has no delivery limit; "
        "remove it (RabbitMQ only)",
        "12:5: queues[0].dead_letter: the broker is redis://, which has no dead-lettering; "
        "remove it (RabbitMQ only)",
    ]
    rabbit = site.replace("redis://127.0.0.1:6379/0", "amqp://127.0.0.1:5672//")
    assert validate_file(write_site(rabbit)).site.queues[0].dead_letter  # valid there
