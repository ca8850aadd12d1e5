"""What the application's own task-sending processes need, spelled the way the app reads it.

The workers get the site's settings through crate_deploy_app; the processes that *send*
tasks (a web server, management commands, cron jobs) configure the app themselves and
never load that module. crate_deploy_producer gives them the same broker, queue
declarations, routes, default queue, serializers and publisher confirms, in one of three
spellings (app_settings.style):

- lowercase: ``broker_url`` (a plain app's ``config_from_object("crate_deploy_producer")``);
- celery-namespace: ``CELERY_BROKER_URL`` (Django, ``namespace="CELERY"``);
- old-uppercase: ``BROKER_URL``, ``CELERY_ROUTES`` (Django with no namespace, like CRATE:
  Celery reads the pre-4.0 names there, and refuses a source that mixes old and new).

The old names are Celery's own table (``celery.app.defaults._TO_OLD_KEY``), identical in
5.2.7 and 5.7.0 for every key below; tests/plan/test_producer.py checks it against both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from crate_deploy.plan.settings import Settings
from crate_deploy.site.fields import SECRET_REFERENCE
from crate_deploy.site.model import Site

#: Settings a sending process needs, with their pre-4.0 (no namespace) names.
OLD_NAMES: dict[str, str] = {
    "broker_url": "BROKER_URL",
    "broker_password": "BROKER_PASSWORD",
    "broker_failover_strategy": "BROKER_FAILOVER_STRATEGY",
    "broker_heartbeat": "BROKER_HEARTBEAT",
    "broker_connection_timeout": "BROKER_CONNECTION_TIMEOUT",
    "broker_connection_max_retries": "BROKER_CONNECTION_MAX_RETRIES",
    "broker_transport_options": "BROKER_TRANSPORT_OPTIONS",
    "result_backend": "CELERY_RESULT_BACKEND",
    "result_expires": "CELERY_TASK_RESULT_EXPIRES",
    "task_ignore_result": "CELERY_IGNORE_RESULT",
    "task_serializer": "CELERY_TASK_SERIALIZER",
    "accept_content": "CELERY_ACCEPT_CONTENT",
    "result_serializer": "CELERY_RESULT_SERIALIZER",
    "result_accept_content": "RESULT_ACCEPT_CONTENT",
    "task_default_delivery_mode": "CELERY_DEFAULT_DELIVERY_MODE",
    "task_queues": "CELERY_QUEUES",
    "task_default_queue": "CELERY_DEFAULT_QUEUE",
    "task_default_exchange": "CELERY_DEFAULT_EXCHANGE",
    "task_default_routing_key": "CELERY_DEFAULT_ROUTING_KEY",
    "task_default_queue_type": "CELERY_DEFAULT_QUEUE_TYPE",
    "task_create_missing_queues": "CELERY_CREATE_MISSING_QUEUES",
    "task_routes": "CELERY_ROUTES",
    "task_send_sent_event": "CELERY_SEND_TASK_SENT_EVENT",
}



@dataclass(frozen=True)
class ProducerModule:
    """The names and values of crate_deploy_producer, and which values hold ${REFERENCES}."""

    style: str
    settings: dict[str, Any]
    resolve: dict[str, bool]  # name -> in a URL (percent-encode), for values with references


def producer_module(site: Site, settings: Settings) -> ProducerModule:
    """The producer settings, from the workers' (already fitted to the target's version)."""
    split = _split_password(site)
    chosen = {key: split.get(key, settings.get(key)) for key in OLD_NAMES
              if key in settings or key in split}
    style = site.app_settings.style
    spelled = {spell(key, style): value for key, value in chosen.items()}
    resolve = {spell(key, style): key != "broker_password" for key, value in chosen.items()
               if _has_reference(value)}
    return ProducerModule(style, spelled, resolve)


def spell(key: str, style: str) -> str:
    """A lowercase setting name in the given style."""
    if style == "celery-namespace":
        return f"CELERY_{key.upper()}"
    if style == "old-uppercase":
        return OLD_NAMES[key]
    return key


def _split_password(site: Site) -> Settings:
    """Broker URLs without their password, and the password as broker_password, when every
    URL (AMQP) holds the same ${REFERENCE}: a setting named *PASSWORD* is hidden by Django's
    error pages and by Celery's `inspect conf` under any spelling, while a BROKER_URL is shown
    by Django, and 5.7.0's `inspect conf` shows an overlaid CELERY_BROKER_URL in clear.
    kombu keeps the password across failover to the next URL."""
    urls = site.broker.urls
    if not site.broker.is_rabbitmq:
        return {}
    passwords = {urlsplit(url).password for url in urls}
    if len(passwords) != 1:
        return {}
    password = passwords.pop()
    if password is None or SECRET_REFERENCE.fullmatch(password) is None:
        return {}
    bare = [_without_password(url) for url in urls]
    return {"broker_url": bare if len(bare) > 1 else bare[0], "broker_password": password}


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}@{host}"))


def _has_reference(value: Any) -> bool:
    if isinstance(value, str):
        return SECRET_REFERENCE.search(value) is not None
    if isinstance(value, list):
        return any(_has_reference(item) for item in value)
    if isinstance(value, dict):
        return any(_has_reference(item) for item in value.values())
    return False
