"""The site file's `kubernetes:` section: what only `render --target kubernetes` needs.

The fleet itself (pools, beat, Flower, their commands and stop timeouts) comes from the
rest of the site, as for systemd; this section says what a cluster adds: the image, the
namespace, replicas and resources, the Secret the operator creates, KEDA. Every value
lands in a manifest, so each is held to the pattern Kubernetes itself enforces (DNS-1123
names, label syntax, quantities, image references) and refused here with its position,
not by the API server at `kubectl apply` time.
"""

# No `from __future__ import annotations`: pydantic would compile and evaluate every
# field's annotation from its string (~2 ms of every command); these are plain objects.

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints

from crate_deploy.site.strict import TEXT_PATTERN, Strict

# RFC 1123 label (namespaces, Service names) and subdomain (most other object names).
DNS_LABEL_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"
# [registry[:port]/]path[:tag][@sha256:digest], with a tag or a digest: an image that
# floats (no tag, or a tag re-pushed) makes two pods of one Deployment run different code.
IMAGE_PATTERN = (r"^([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*"
                 r"[A-Za-z0-9])?)*(:[0-9]+)?/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*"
                 r"(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
                 r"(:[A-Za-z0-9_][A-Za-z0-9_.-]*(@sha256:[0-9a-f]+)?|@sha256:[0-9a-f]+)$")
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
LABEL_KEY_PATTERN = (r"^([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*/)?"
                     r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?)?$"
SECRET_KEY_PATTERN = r"^[A-Za-z0-9_.-]+$"  # noqa: S105 - a pattern, not a secret
POOL_KEY_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"  # a pool name, as model.NAME_PATTERN


def _label_key_lengths(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if len(name) > 63 or len(prefix) > 253:
        raise ValueError("must be at most 63 characters after the '/', 253 before it")
    return key


def _image_lengths(image: str) -> str:
    digest = image.partition("@sha256:")[2]
    tag = image.rpartition("/")[2].partition("@")[0].partition(":")[2]
    if digest and len(digest) != 64:
        raise ValueError("has a sha256 digest that is not 64 hex digits")
    if len(tag) > 128:
        raise ValueError("has a tag longer than 128 characters")
    return image


DnsLabel = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, max_length=63)]
DnsSubdomain = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
Image = Annotated[str, StringConstraints(pattern=IMAGE_PATTERN, max_length=500),
                  AfterValidator(_image_lengths)]
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=40)]
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN, max_length=317),
                     AfterValidator(_label_key_lengths)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=63)]
AnnotationValue = Annotated[str, StringConstraints(pattern=TEXT_PATTERN, max_length=4000)]
SecretKey = Annotated[str, StringConstraints(pattern=SECRET_KEY_PATTERN, max_length=253)]
PoolKey = Annotated[str, StringConstraints(pattern=POOL_KEY_PATTERN)]
Replicas = Annotated[int, Field(ge=0, le=1000)]


class Quantities(Strict):
    cpu: Quantity | None = None
    """CPU, in cores or millicores ("500m")."""
    memory: Quantity | None = None
    """Memory, in bytes with a suffix ("512Mi", "2Gi")."""


class Resources(Strict):
    """A container's resource requests and limits, as in a Pod spec."""

    requests: Quantities = Field(default_factory=Quantities)
    """What the scheduler reserves for the container."""
    limits: Quantities = Field(default_factory=Quantities)
    """The most it may use (a memory limit kills the container when exceeded)."""


class KubernetesPool(Strict):
    """What one worker pool's Deployment needs beyond the pool itself."""

    replicas: Replicas | None = None
    """Pods of this pool (default 1); not with keda.enabled, where KEDA sets it."""
    min_replicas: Replicas | None = None
    """With keda.enabled: fewest pods (default 1; 0 lets KEDA scale the pool to zero)."""
    max_replicas: Annotated[int, Field(ge=1, le=1000)] | None = None
    """With keda.enabled: most pods (default 10)."""
    resources: Resources | None = None
    """This pool's container resources (default: kubernetes.resources)."""


class Keda(Strict):
    """A KEDA ScaledObject per pool, on the RabbitMQ queue length (needs KEDA installed)."""

    enabled: bool = False
    """Scale each pool on the length of its queues (ready and unacknowledged messages)."""
    host_key: SecretKey = "RABBITMQ_MANAGEMENT_URL"
    """The key, in kubernetes.secret, holding the RabbitMQ management API URL with its
    credentials (http://user:password@rabbitmq:15672/vhost), for KEDA's TriggerAuthentication.
    """
    polling_interval: Annotated[int, Field(ge=1, le=3600)] = 30
    """Seconds between KEDA's looks at the queues."""
    cooldown_period: Annotated[int, Field(ge=0, le=86400)] = 300
    """Seconds after the last non-empty look before a pool with min_replicas 0 goes to zero."""


class Kubernetes(Strict):
    """What `render --target kubernetes` needs beyond the fleet itself."""

    image: Image
    """The container image holding the application, its venv and Celery, with a tag or digest
    (registry.example.org/crate/celery:2.4.1).
    """
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    """When the kubelet pulls the image."""
    image_pull_secrets: list[DnsSubdomain] = Field(default_factory=list, max_length=20)
    """Secrets holding registry credentials for a private registry."""
    namespace: DnsLabel | None = None
    """Namespace of every object (default: none written, so `kubectl -n` chooses)."""
    service_account: DnsSubdomain | None = None
    """ServiceAccount the pods run as (default: the namespace's default); the API token is
    never mounted either way.
    """
    secret: DnsSubdomain | None = None
    """Name of the Secret the operator creates with every ${REFERENCE} as a key (default:
    PROJECT-secrets).
    """
    run_as_user: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    """Numeric user (and group) the containers run as (default: the image's USER, which must
    then be numeric and not root).
    """
    resources: Resources | None = None
    """Resources of every container (pools may override)."""
    pools: dict[PoolKey, KubernetesPool] = Field(default_factory=dict, max_length=2000)
    """Per pool (by workers[].name): replicas, KEDA bounds, resources."""
    keda: Keda = Field(default_factory=Keda)
    """Queue-length autoscaling with KEDA."""
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=50)
    """Extra labels on every object and pod (not in selectors, so they may change)."""
    annotations: dict[LabelKey, AnnotationValue] = Field(default_factory=dict, max_length=50)
    """Extra annotations on every pod."""
