"""Live state back into manifests, leaving out what is inherited or default.

Applying an export changes nothing: each value is what the planner reads back.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from broker_gateway.manifests.admin import Fields
from broker_gateway.manifests.model import (
    API_VERSION,
    Document,
    Metadata,
    Namespace,
    NamespaceMetadata,
    NamespaceSpec,
    Subscription,
    SubscriptionMetadata,
    Tenant,
    TenantSpec,
    Topic,
    TopicMetadata,
    TopicSpec,
    dump,
)
from broker_gateway.manifests.planner import Ref
from broker_gateway.pulsar.queues.config import SubscriptionConfig


def documents_from_state(
    tenants: Sequence[str], states: Mapping[str, Mapping[Ref, Fields]], clusters: Sequence[str]
) -> list[dict[str, Any]]:
    """Manifests for `tenants`, from the state read on each cluster (in `clusters` order).

    Where clusters disagree, the first one that has the object wins; a plan of the
    export then shows the others' drift.
    """
    ordered = [c for c in clusters if c in states]

    def first(ref: Ref) -> Fields | None:
        return next((states[c][ref] for c in ordered if ref in states[c]), None)

    def names(kind: str, tenant: str) -> list[str]:
        found = {
            r.name for c in ordered for r in states[c] if r.kind == kind and r.tenant == tenant
        }
        return sorted(found)

    documents: list[Document] = []
    for tenant in tenants:
        fields = first(Ref("Tenant", tenant))
        if fields is None:
            continue
        documents.append(
            Tenant(
                apiVersion=API_VERSION,
                kind="Tenant",
                metadata=Metadata(name=tenant),
                spec=TenantSpec(admin_roles=fields["admin_roles"], clusters=fields["clusters"]),
            )
        )
        for name in names("Namespace", tenant):
            documents.append(_namespace(name, {c: states[c] for c in ordered}))
        for name in names("Topic", tenant):
            topic = first(Ref("Topic", name)) or {}
            documents.append(
                Topic(
                    apiVersion=API_VERSION,
                    kind="Topic",
                    metadata=TopicMetadata(name=name),
                    spec=TopicSpec(
                        partitions=topic["partitions"],
                        schema=topic.get("schema"),
                        replication=topic["replication"],
                        retention=topic["retention"],
                        message_ttl=topic["message_ttl"],
                        deduplication=topic["deduplication"],
                    ),
                )
            )
        for key in names("Subscription", tenant):
            subscription = first(Ref("Subscription", key)) or {}
            topic_name, name = key.rsplit("/", 1)
            documents.append(
                Subscription(
                    apiVersion=API_VERSION,
                    kind="Subscription",
                    metadata=SubscriptionMetadata(name=name, topic=topic_name),
                    spec=SubscriptionConfig(**subscription),
                )
            )
    return [dump(d) for d in documents]


def _namespace(name: str, states: Mapping[str, Mapping[Ref, Fields]]) -> Namespace:
    ref = Ref("Namespace", name)
    found = {cluster: state[ref] for cluster, state in states.items() if ref in state}
    fields = next(iter(found.values()))
    # A namespace that replicates only to the cluster it is on is the unreplicated default.
    local = all(f["replication"] == (cluster,) for cluster, f in found.items())
    return Namespace(
        apiVersion=API_VERSION,
        kind="Namespace",
        metadata=NamespaceMetadata(name=name),
        spec=NamespaceSpec(
            replication=None if local else fields["replication"],
            retention=fields["retention"],
            message_ttl=fields["message_ttl"],
            deduplication=fields["deduplication"],
            backlog_quota=fields["backlog_quota"],
            schema_compatibility=fields["schema_compatibility"],
            schema_validation_enforced=fields["schema_validation_enforced"],
            delayed_delivery=fields["delayed_delivery"],
        ),
    )
