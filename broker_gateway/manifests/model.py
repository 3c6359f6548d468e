"""Manifest documents (`apiVersion: broker-gateway/v1`) and the checks that need no broker.

A manifest set is read whole: tenants, their namespaces, topics and subscriptions. Every
object's parent must be declared in the same set, so a plan always knows which clusters an
object lives in.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from broker_gateway.errors import InvalidManifest
from broker_gateway.manifests.units import INFINITE, Duration, Size
from broker_gateway.pulsar.queues.config import SubscriptionConfig

API_VERSION: Final = "broker-gateway/v1"

_PART = r"[A-Za-z0-9_.=:-]{1,255}"


def _no_dot_parts(value: str) -> str:
    # Pulsar's characters allow them, but "." and ".." would move an admin URL.
    if any(part in (".", "..") for part in value.split("/")):
        raise ValueError("'.' and '..' are not names")
    return value


Name = Annotated[str, StringConstraints(pattern=rf"^{_PART}$"), AfterValidator(_no_dot_parts)]
NamespacePath = Annotated[
    str, StringConstraints(pattern=rf"^{_PART}/{_PART}$"), AfterValidator(_no_dot_parts)
]
TopicPath = Annotated[
    str, StringConstraints(pattern=rf"^{_PART}/{_PART}/{_PART}$"), AfterValidator(_no_dot_parts)
]
Clusters = tuple[Name, ...]

SchemaCompatibility = Literal[
    "ALWAYS_INCOMPATIBLE",
    "ALWAYS_COMPATIBLE",
    "BACKWARD",
    "FORWARD",
    "FULL",
    "BACKWARD_TRANSITIVE",
    "FORWARD_TRANSITIVE",
    "FULL_TRANSITIVE",
]
SchemaType = Literal[
    "JSON",
    "AVRO",
    "PROTOBUF",
    "STRING",
    "BYTES",
    "BOOLEAN",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FLOAT",
    "DOUBLE",
]
_STRUCT_SCHEMAS: Final = ("JSON", "AVRO", "PROTOBUF")
# Every tenant's namespace of this name holds the gateway's audit trail of applies:
# manifests do not declare it, and export and prune leave it alone.
RESERVED_NAMESPACE: Final = "broker-gateway"


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Retention(Spec):
    """How long and how much acknowledged data a topic keeps (`infinite` for no limit)."""

    time: Duration = Field(description="e.g. 7d; a whole number of minutes")
    size: Size = Field(description="e.g. 10G")

    @field_validator("time")
    @classmethod
    def _whole_minutes(cls, value: int) -> int:
        if value != INFINITE and value % 60:
            raise ValueError("retention time is kept in whole minutes")
        return value


class BacklogQuota(Spec):
    """What happens when unacknowledged data outgrows `size`."""

    size: Size
    policy: Literal["producer_request_hold", "producer_exception", "consumer_backlog_eviction"] = (
        "producer_request_hold"
    )


class Schema(Spec):
    """The topic's data contract, checked by Pulsar against the namespace's compatibility rule."""

    type: SchemaType
    definition: dict[str, Any] | str | None = Field(
        default=None, description="For JSON/AVRO: the Avro record schema, as YAML or a string."
    )
    properties: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _definition_fits_type(self) -> "Schema":
        if self.type in _STRUCT_SCHEMAS and self.definition is None:
            raise ValueError(f"a {self.type} schema needs a definition")
        if self.type not in _STRUCT_SCHEMAS and self.definition is not None:
            raise ValueError(f"a {self.type} schema takes no definition")
        return self

    @field_validator("definition", mode="before")
    @classmethod
    def _json_text_to_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except ValueError:
                return value
            return parsed if isinstance(parsed, dict) else value
        return value

    def data(self) -> str:
        """The schema text as Pulsar stores it."""
        if isinstance(self.definition, dict):
            return json.dumps(self.definition, separators=(",", ":"))
        return self.definition or ""


class Metadata(Spec):
    """A Tenant's: its name."""

    name: Name


class NamespaceMetadata(Metadata):
    name: NamespacePath  # {tenant}/{namespace}


class TopicMetadata(Metadata):
    name: TopicPath  # {tenant}/{namespace}/{topic}


class SubscriptionMetadata(Metadata):
    name: Name
    topic: TopicPath


class TenantSpec(Spec):
    admin_roles: tuple[str, ...] = ()
    clusters: Clusters = Field(min_length=1, description="The Pulsar clusters it lives in.")
    replication: Clusters | None = Field(
        default=None,
        description="Where its namespaces replicate by default. Unset: each cluster's "
        "namespaces keep their data to themselves.",
    )


class NamespaceSpec(Spec):
    replication: Clusters | None = Field(default=None, description="Overrides the tenant's.")
    retention: Retention | None = None
    message_ttl: Duration | None = None
    deduplication: bool | None = None
    backlog_quota: BacklogQuota | None = None
    schema_compatibility: SchemaCompatibility | None = None
    # Pulsar refuses producers without a schema on its topics that have one (the gateway
    # always publishes with the topic's schema).
    schema_validation_enforced: bool | None = None
    delayed_delivery: bool | None = None


class TopicSpec(Spec):
    partitions: int = Field(default=0, ge=0, le=10_000, description="0: not partitioned")
    schema_: Schema | None = Field(default=None, alias="schema")
    replication: Clusters | None = Field(default=None, description="Overrides the namespace's.")
    retention: Retention | None = None
    message_ttl: Duration | None = None
    deduplication: bool | None = None

    model_config = ConfigDict(populate_by_name=True)


class Document(Spec):
    api_version: Literal["broker-gateway/v1"] = Field(alias="apiVersion")
    metadata: Metadata

    model_config = ConfigDict(populate_by_name=True)

    @property
    def name(self) -> str:
        return self.metadata.name


class Tenant(Document):
    kind: Literal["Tenant"]
    spec: TenantSpec


class Namespace(Document):
    kind: Literal["Namespace"]
    metadata: NamespaceMetadata
    spec: NamespaceSpec = NamespaceSpec()

    @property
    def tenant(self) -> str:
        return self.name.split("/")[0]


class Topic(Document):
    kind: Literal["Topic"]
    metadata: TopicMetadata
    spec: TopicSpec = TopicSpec()

    @property
    def namespace(self) -> str:
        return self.name.rsplit("/", 1)[0]


class Subscription(Document):
    kind: Literal["Subscription"]
    metadata: SubscriptionMetadata
    spec: SubscriptionConfig = SubscriptionConfig()

    @property
    def topic(self) -> str:
        return self.metadata.topic

    @property
    def key(self) -> str:
        return f"{self.metadata.topic}/{self.metadata.name}"


AnyDocument = Annotated[Tenant | Namespace | Topic | Subscription, Field(discriminator="kind")]
_DOCUMENT: Final[TypeAdapter[Tenant | Namespace | Topic | Subscription]] = TypeAdapter(AnyDocument)


@dataclass(frozen=True)
class ManifestProblem:
    """One reason a manifest set is invalid: where, and what is wrong."""

    source: str
    message: str
    path: str = ""

    def __str__(self) -> str:
        where = f"{self.source} {self.path}".strip()
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Manifests:
    """A validated manifest set, by kind and name."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    topics: dict[str, Topic] = field(default_factory=dict)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)

    def documents(self) -> list[Tenant | Namespace | Topic | Subscription]:
        return [
            *self.tenants.values(),
            *self.namespaces.values(),
            *self.topics.values(),
            *self.subscriptions.values(),
        ]

    def tenant_of(self, name: str) -> Tenant:
        """The tenant of a namespace, topic or subscription key."""
        return self.tenants[name.split("/")[0]]

    def namespace_replication(self, namespace: str) -> Clusters | None:
        """Where a namespace replicates: its own setting, else its tenant's default."""
        own = self.namespaces[namespace].spec.replication
        return own if own is not None else self.tenant_of(namespace).spec.replication

    def topic_clusters(self, topic: str) -> Clusters:
        """The clusters a topic lives in."""
        doc = self.topics[topic]
        if doc.spec.replication is not None:
            return doc.spec.replication
        return self.namespace_replication(doc.namespace) or self.tenant_of(topic).spec.clusters


def dump(document: Document) -> dict[str, Any]:
    """A document as a manifest: camelCase envelope, defaults left out."""
    body = document.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    ordered = {"apiVersion": API_VERSION, "kind": getattr(document, "kind")}  # noqa: B009
    ordered["metadata"] = body["metadata"]
    if body.get("spec"):
        ordered["spec"] = body["spec"]
    return ordered


def build(raw: Iterable[tuple[str, Any]], clusters: Sequence[str]) -> Manifests:
    """Check a manifest set without a broker: shape, names, clusters and references.

    `raw` is (source, parsed document) pairs; `clusters` are the configured cluster names.
    Raises: InvalidManifest listing every problem found.
    """
    problems: list[ManifestProblem] = []
    manifests = Manifests()
    for source, document in raw:
        try:
            parsed = _DOCUMENT.validate_python(document)
        except ValidationError as exc:
            problems.extend(_validation_problems(source, document, exc))
            continue
        table: dict[str, Any] = {  # type: ignore[assignment]
            "Tenant": manifests.tenants,
            "Namespace": manifests.namespaces,
            "Topic": manifests.topics,
            "Subscription": manifests.subscriptions,
        }[parsed.kind]
        key = parsed.key if isinstance(parsed, Subscription) else parsed.name
        if key in table:
            problems.append(ManifestProblem(source, f"{parsed.kind} {key} is declared twice"))
        table[key] = parsed
    if not problems:
        problems.extend(_semantic_problems(manifests, set(clusters)))
    if problems:
        raise InvalidManifest(problems)
    return manifests


def _validation_problems(source: str, document: Any, exc: ValidationError) -> list[ManifestProblem]:
    kind = document.get("kind") if isinstance(document, dict) else None
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(p) for p in error["loc"]]
        if loc and loc[0] == kind:  # the discriminated union names the kind first
            loc = loc[1:]
        message = error["msg"]
        if error["type"] == "union_tag_invalid" or error["type"] == "union_tag_not_found":
            message = "kind must be one of Tenant, Namespace, Topic, Subscription"
        problems.append(ManifestProblem(source, message, ".".join(loc)))
    return problems


def _semantic_problems(m: Manifests, clusters: set[str]) -> list[ManifestProblem]:
    return [
        *_tenant_problems(m, clusters),
        *_namespace_problems(m),
        *_topic_problems(m),
        *_subscription_problems(m),
    ]


def _replication_problems(
    what: str, replication: Clusters | None, allowed: Clusters
) -> list[ManifestProblem]:
    if replication is None:
        return []
    problems = []
    if not replication:
        problems.append(ManifestProblem(what, "replication needs at least one cluster"))
    if len(set(replication)) != len(replication):
        problems.append(ManifestProblem(what, "replication lists a cluster twice"))
    outside = sorted(set(replication) - set(allowed))
    if outside:
        problems.append(
            ManifestProblem(
                what,
                f"replication to {', '.join(outside)}: not among the tenant's clusters "
                f"({', '.join(allowed)})",
            )
        )
    return problems


def _tenant_problems(m: Manifests, clusters: set[str]) -> list[ManifestProblem]:
    problems = []
    for name, tenant in m.tenants.items():
        what = f"Tenant {name}"
        unknown = sorted(set(tenant.spec.clusters) - clusters)
        if unknown:
            problems.append(
                ManifestProblem(
                    what,
                    f"unknown cluster {', '.join(unknown)}: the gateway knows "
                    f"{', '.join(sorted(clusters))}",
                )
            )
        if len(set(tenant.spec.clusters)) != len(tenant.spec.clusters):
            problems.append(ManifestProblem(what, "a cluster is listed twice"))
        problems += _replication_problems(what, tenant.spec.replication, tenant.spec.clusters)
    return problems


def _namespace_problems(m: Manifests) -> list[ManifestProblem]:
    problems = []
    for name, namespace in m.namespaces.items():
        what = f"Namespace {name}"
        if name.split("/")[1] == RESERVED_NAMESPACE:
            problems.append(ManifestProblem(what, "this name is the gateway's (its audit trail)"))
        owner = m.tenants.get(namespace.tenant)
        if owner is None:
            problems.append(ManifestProblem(what, f"its tenant {namespace.tenant} is not declared"))
            continue
        spec = namespace.spec
        problems += _replication_problems(what, spec.replication, owner.spec.clusters)
        if spec.backlog_quota and spec.retention and spec.retention.size != INFINITE:
            if spec.backlog_quota.size >= spec.retention.size:
                problems.append(
                    ManifestProblem(what, "backlog_quota.size must be smaller than retention.size")
                )
    return problems


def _topic_problems(m: Manifests) -> list[ManifestProblem]:
    problems = []
    for name, topic in m.topics.items():
        what = f"Topic {name}"
        if topic.namespace not in m.namespaces:
            problems.append(
                ManifestProblem(what, f"its namespace {topic.namespace} is not declared")
            )
            continue
        problems += _replication_problems(
            what, topic.spec.replication, m.tenant_of(name).spec.clusters
        )
    return problems


def _subscription_problems(m: Manifests) -> list[ManifestProblem]:
    problems = []
    for key, subscription in m.subscriptions.items():
        what = f"Subscription {subscription.name} on {subscription.topic}"
        if subscription.topic not in m.topics:
            problems.append(
                ManifestProblem(what, f"its topic {subscription.topic} is not declared")
            )
        dead_letters = subscription.spec.dead_letter_topic
        if dead_letters is not None and dead_letters.split("/")[0] != key.split("/")[0]:
            problems.append(
                ManifestProblem(what, "dead_letter_topic must be in the topic's tenant")
            )
    return problems
