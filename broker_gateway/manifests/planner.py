"""The planner: desired state (manifests) and actual state (per cluster) in, changes out.

Pure: no broker, no I/O. Both states are maps from object references to canonical field
values, so comparing them is the same for every kind of object. A field that is None is
inherited; a field the desired side leaves out (a topic's schema, when no manifest gives
one) is not managed and never compared.
"""

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Final, Literal

from broker_gateway.manifests.model import Manifests
from broker_gateway.settings import Cluster

Kind = Literal["Cluster", "Tenant", "Namespace", "Topic", "Subscription"]
Action = Literal["create", "update", "delete", "no-op"]
Fields = Mapping[str, Any]

# Creates and updates run parents first; deletes run children first.
_CREATE_ORDER: Final[dict[str, int]] = {
    "Cluster": 0,
    "Tenant": 1,
    "Namespace": 2,
    "Topic": 3,
    "Subscription": 4,
}
_DELETE_ORDER: Final[dict[str, int]] = {"Subscription": 5, "Topic": 6, "Namespace": 7}
# Only read when an object is created.
_CREATE_ONLY: Final = frozenset({"initial_position"})


@dataclass(frozen=True, order=True)
class Ref:
    """One object on one cluster: a peer cluster, tenant, namespace, topic or subscription.

    A subscription's name is `{tenant}/{namespace}/{topic}/{subscription}`.
    """

    kind: Kind
    name: str

    def __str__(self) -> str:
        if self.kind == "Subscription":
            topic, subscription = self.name.rsplit("/", 1)
            return f"Subscription {subscription} on {topic}"
        return f"{self.kind} {self.name}"

    @property
    def tenant(self) -> str:
        return self.name.split("/")[0]


State = Mapping[Ref, Fields]


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: Any
    new: Any


@dataclass(frozen=True)
class Change:
    cluster: str
    ref: Ref
    action: Action
    fields: tuple[FieldChange, ...] = ()
    desired: Fields = field(default_factory=dict)
    # Why this change loses data, if it does.
    destructive: str | None = None

    @property
    def stage(self) -> int:
        order = _DELETE_ORDER if self.action == "delete" else _CREATE_ORDER
        return order[self.ref.kind]

    def __str__(self) -> str:
        text = f"{self.cluster}: {self.action} {self.ref}"
        return f"{text} ({self.destructive})" if self.destructive else text


@dataclass(frozen=True)
class Plan:
    """Every change, in the order apply runs them; no-ops included so a plan is complete."""

    changes: tuple[Change, ...]

    @property
    def pending(self) -> list[Change]:
        return [c for c in self.changes if c.action != "no-op"]

    @property
    def destructive(self) -> list[Change]:
        return [c for c in self.changes if c.destructive]

    def summary(self) -> dict[str, int]:
        counts = dict.fromkeys(("create", "update", "delete", "no-op"), 0)
        for change in self.changes:
            counts[change.action] += 1
        return counts


def desired_state(
    manifests: Manifests, clusters: Iterable[Cluster]
) -> dict[str, dict[Ref, Fields]]:
    """What every cluster should hold, as if the tenant's clusters shared one configuration.

    A tenant's namespaces exist on each of its clusters with the same policies; a topic and
    its subscriptions exist on the clusters it replicates to.
    """
    known = {c.name: c for c in clusters}
    state: dict[str, dict[Ref, Fields]] = {}
    for cluster, ref, fields in chain(
        _desired_tenants(manifests, known),
        _desired_namespaces(manifests),
        _desired_topics(manifests),
        _desired_subscriptions(manifests),
    ):
        state.setdefault(cluster, {})[ref] = fields
    return state


# One object desired on one cluster.
_Desired = tuple[str, Ref, Fields]


def _desired_tenants(manifests: Manifests, known: Mapping[str, Cluster]) -> Iterator[_Desired]:
    """Each tenant on each of its clusters, and there every other one of them as a peer."""
    for tenant in manifests.tenants.values():
        for cluster in tenant.spec.clusters:
            yield (
                cluster,
                Ref("Tenant", tenant.name),
                {
                    "admin_roles": tuple(sorted(set(tenant.spec.admin_roles))),
                    "clusters": tuple(sorted(tenant.spec.clusters)),
                },
            )
            for peer in tenant.spec.clusters:
                if peer != cluster:
                    yield (
                        cluster,
                        Ref("Cluster", peer),
                        {"service_url": known[peer].service_url, "admin_url": _url(known[peer])},
                    )


def _desired_namespaces(manifests: Manifests) -> Iterator[_Desired]:
    for namespace in manifests.namespaces.values():
        spec = namespace.spec
        replication = manifests.namespace_replication(namespace.name)
        for cluster in manifests.tenant_of(namespace.name).spec.clusters:
            yield (
                cluster,
                Ref("Namespace", namespace.name),
                {
                    # Unreplicated, a namespace keeps its data to itself on each cluster.
                    "replication": tuple(sorted(replication or (cluster,))),
                    "retention": spec.retention,
                    "message_ttl": spec.message_ttl,
                    "deduplication": spec.deduplication,
                    "backlog_quota": spec.backlog_quota,
                    "schema_compatibility": spec.schema_compatibility,
                    # Off is Pulsar's default: false and unset are the same.
                    "schema_validation_enforced": spec.schema_validation_enforced or None,
                    "delayed_delivery": spec.delayed_delivery,
                },
            )


def _desired_topics(manifests: Manifests) -> Iterator[_Desired]:
    for topic in manifests.topics.values():
        topic_spec = topic.spec
        fields: dict[str, Any] = {
            "partitions": topic_spec.partitions,
            "replication": None
            if topic_spec.replication is None
            else tuple(sorted(topic_spec.replication)),
            "retention": topic_spec.retention,
            "message_ttl": topic_spec.message_ttl,
            "deduplication": topic_spec.deduplication,
        }
        if topic_spec.schema_ is not None:
            fields["schema"] = topic_spec.schema_
        for cluster in manifests.topic_clusters(topic.name):
            yield cluster, Ref("Topic", topic.name), fields


def _desired_subscriptions(manifests: Manifests) -> Iterator[_Desired]:
    for key, subscription in manifests.subscriptions.items():
        for cluster in manifests.topic_clusters(subscription.topic):
            yield cluster, Ref("Subscription", key), subscription.spec.model_dump()


def plan(
    desired: Mapping[str, State],
    actual: Mapping[str, State],
    *,
    prune_tenants: Iterable[str] = (),
) -> Plan:
    """The changes that turn `actual` into `desired`, cluster by cluster.

    With `prune_tenants`, namespaces, topics and subscriptions of those tenants that no
    manifest declares are deleted; nothing outside them ever is.
    """
    prune = set(prune_tenants)
    changes: list[Change] = []
    for cluster in sorted(desired):
        wanted, live = desired[cluster], actual.get(cluster, {})
        for ref in sorted(wanted):
            changes.append(_compare(cluster, ref, wanted, live))
        for ref in sorted(live):
            if ref not in wanted and ref.kind in _DELETE_ORDER and ref.tenant in prune:
                changes.append(Change(cluster, ref, "delete", destructive=_deletion_loses(ref)))
    changes.sort(key=lambda c: (c.stage, c.cluster, c.ref))
    return Plan(tuple(changes))


def live_problems(desired: Mapping[str, State], actual: Mapping[str, State]) -> list[str]:
    """What the live state makes impossible: Pulsar cannot take partitions away."""
    problems = []
    for cluster, wanted in sorted(desired.items()):
        live = actual.get(cluster, {})
        for ref, fields in sorted(wanted.items()):
            if ref.kind != "Topic" or ref not in live:
                continue
            old, new = live[ref]["partitions"], fields["partitions"]
            if old and new < old:
                problems.append(f"{ref} on {cluster}: partitions cannot decrease ({old} → {new})")
            elif not old and new:
                problems.append(
                    f"{ref} on {cluster}: exists unpartitioned; Pulsar cannot partition it"
                )
    return problems


def _compare(cluster: str, ref: Ref, wanted: State, live: State) -> Change:
    new = wanted[ref]
    if ref not in live:
        shown = tuple(
            FieldChange(k, None, v)
            for k, v in new.items()
            if v is not None and k not in _CREATE_ONLY
        )
        return Change(cluster, ref, "create", shown, new)
    old = live[ref]
    diffs = tuple(
        FieldChange(k, old.get(k), v)
        for k, v in new.items()
        if k not in _CREATE_ONLY and old.get(k) != v
    )
    if not diffs:
        return Change(cluster, ref, "no-op", desired=new)
    return Change(
        cluster, ref, "update", diffs, new, _update_loses(cluster, ref, diffs, wanted, live)
    )


def _update_loses(
    cluster: str, ref: Ref, diffs: tuple[FieldChange, ...], wanted: State, live: State
) -> str | None:
    reasons = []
    for diff in diffs:
        if diff.field == "partitions":
            reasons.append("changes the partition count, which moves keys between partitions")
        elif diff.field == "clusters":  # a tenant leaving clusters
            dropped = sorted(set(diff.old) - set(diff.new))
            if dropped:
                reasons.append(f"removes the tenant from {', '.join(dropped)}")
        elif diff.field == "replication":
            old, new = set(diff.old or ()), set(diff.new or ())
            if ref.kind == "Topic":  # None: the namespace's replication
                namespace = Ref("Namespace", ref.name.rsplit("/", 1)[0])
                old = old or set(live.get(namespace, {}).get("replication", ()))
                new = new or set(wanted.get(namespace, {}).get("replication", ()))
            dropped = sorted(old - new)
            if dropped:
                reasons.append(
                    f"stops replicating to {', '.join(dropped)}: Pulsar deletes the "
                    f"{'topic' if ref.kind == 'Topic' else 'topics'} there"
                )
    return "; ".join(reasons) or None


def _deletion_loses(ref: Ref) -> str:
    if ref.kind == "Subscription":
        return "deletes the subscription and its position"
    return f"deletes the {ref.kind.lower()} and its messages"


def _url(cluster: Cluster) -> str:
    return str(cluster.admin_url).rstrip("/")
