from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import HttpUrl

from broker_gateway.manifests.model import Retention, Schema, build
from broker_gateway.manifests.planner import (
    Change,
    FieldChange,
    Plan,
    Ref,
    desired_state,
    live_problems,
    plan,
)
from broker_gateway.manifests.render import plan_json, plan_text
from broker_gateway.settings import Cluster

EAST = Cluster(
    name="east", service_url="pulsar://127.0.0.1:6650", admin_url=HttpUrl("http://127.0.0.1:8080")
)
WEST = Cluster(
    name="west", service_url="pulsar://127.0.0.1:6660", admin_url=HttpUrl("http://127.0.0.1:8081/")
)
CLUSTERS = [EAST, WEST]

TENANT = Ref("Tenant", "acme")
ORDERS = Ref("Namespace", "acme/orders")
CREATED = Ref("Topic", "acme/orders/created")
BILLING = Ref("Subscription", "acme/orders/created/billing")

State = dict[str, dict[Ref, dict[str, Any]]]


def doc(kind: str, name: str, spec: dict[str, Any], **metadata: str) -> dict[str, Any]:
    return {
        "apiVersion": "broker-gateway/v1",
        "kind": kind,
        "metadata": {"name": name, **metadata},
        "spec": spec,
    }


def desired(
    *,
    tenant: dict[str, Any] | None = None,
    namespace: dict[str, Any] | None = None,
    topic: dict[str, Any] | None = None,
    subscription: dict[str, Any] | None = None,
    extra: tuple[dict[str, Any], ...] = (),
) -> State:
    """acme on east and west, replicated: acme/orders, its topic `created`, `billing` on it.

    Each keyword replaces or adds fields of that document's spec.
    """
    documents = [
        doc(
            "Tenant",
            "acme",
            {
                "admin_roles": ["acme-admin"],
                "clusters": ["east", "west"],
                "replication": ["east", "west"],
                **(tenant or {}),
            },
        ),
        doc(
            "Namespace",
            "acme/orders",
            {"retention": {"time": "7d", "size": "10G"}, **(namespace or {})},
        ),
        doc("Topic", "acme/orders/created", {"partitions": 4, **(topic or {})}),
        doc(
            "Subscription",
            "billing",
            {"initial_position": "earliest", "max_deliveries": 5, **(subscription or {})},
            topic="acme/orders/created",
        ),
        *extra,
    ]
    manifests = build([(f"test#{i}", d) for i, d in enumerate(documents)], ["east", "west"])
    return copy(desired_state(manifests, CLUSTERS))


def copy(state: Mapping[str, Mapping[Ref, Mapping[str, Any]]]) -> State:
    return {c: {r: dict(f) for r, f in s.items()} for c, s in state.items()}


def live(state: State, **edits: dict[Ref, dict[str, Any]]) -> State:
    """A copy of a state, as if read from the clusters, with fields edited per cluster."""
    edited = copy(state)
    for cluster, refs in edits.items():
        for ref, fields in refs.items():
            edited[cluster][ref].update(fields)
    return edited


def on_both(ref: Ref, **fields: Any) -> dict[str, dict[Ref, dict[str, Any]]]:
    return {"east": {ref: fields}, "west": {ref: fields}}


def changes_of(result: Plan, ref: Ref) -> list[Change]:
    return [c for c in result.changes if c.ref == ref]


# Creating --------------------------------------------------------------------------------


def test_empty_clusters_get_everything_created_parents_first() -> None:
    result = plan(desired(), {})
    assert {c.action for c in result.changes} == {"create"}
    assert [(c.cluster, str(c.ref)) for c in result.changes] == [
        ("east", "Cluster west"),
        ("west", "Cluster east"),
        ("east", "Tenant acme"),
        ("west", "Tenant acme"),
        ("east", "Namespace acme/orders"),
        ("west", "Namespace acme/orders"),
        ("east", "Topic acme/orders/created"),
        ("west", "Topic acme/orders/created"),
        ("east", "Subscription billing on acme/orders/created"),
        ("west", "Subscription billing on acme/orders/created"),
    ]
    assert result.pending == list(result.changes)
    assert result.destructive == []


def test_each_cluster_registers_its_peers_by_their_urls() -> None:
    state = desired()
    assert state["east"][Ref("Cluster", "west")] == {
        "service_url": "pulsar://127.0.0.1:6660",
        "admin_url": "http://127.0.0.1:8081",  # no trailing slash
    }
    assert state["west"][Ref("Cluster", "east")]["admin_url"] == "http://127.0.0.1:8080"
    assert Ref("Cluster", "east") not in state["east"]


def test_create_shows_set_fields_only() -> None:
    [east, _] = changes_of(plan(desired(), {}), ORDERS)
    assert east.fields == (
        FieldChange("replication", None, ("east", "west")),
        FieldChange("retention", None, Retention(time=604_800, size=10_240)),
    )


def test_unreplicated_namespace_keeps_its_data_on_each_cluster() -> None:
    state = desired(tenant={"replication": None})
    assert state["east"][ORDERS]["replication"] == ("east",)
    assert state["west"][ORDERS]["replication"] == ("west",)
    assert CREATED in state["east"] and CREATED in state["west"]


def test_topic_and_its_subscriptions_live_where_the_topic_replicates() -> None:
    state = desired(namespace={"replication": ["east"]})
    assert {CREATED, BILLING} <= set(state["east"])
    assert {CREATED, BILLING}.isdisjoint(state["west"])
    assert ORDERS in state["west"]  # a namespace is on each of its tenant's clusters


# Comparing -------------------------------------------------------------------------------


def test_matching_live_state_is_all_no_op() -> None:
    state = desired()
    result = plan(state, live(state))
    assert {c.action for c in result.changes} == {"no-op"}
    assert len(result.changes) == 10
    assert result.pending == []
    assert result.summary() == {"create": 0, "update": 0, "delete": 0, "no-op": 10}


def test_retention_change_is_one_update_per_cluster() -> None:
    old = Retention(time=259_200, size=10_240)
    result = plan(desired(), live(desired(), **on_both(ORDERS, retention=old)))
    new = Retention(time=604_800, size=10_240)
    assert [(c.cluster, c.ref, c.action) for c in result.pending] == [
        ("east", ORDERS, "update"),
        ("west", ORDERS, "update"),
    ]
    for change in result.pending:
        assert change.fields == (FieldChange("retention", old, new),)
        assert change.destructive is None


def test_inherited_value_on_both_sides_is_no_op() -> None:
    state = desired()
    assert state["east"][ORDERS]["message_ttl"] is None
    assert state["east"][CREATED]["retention"] is None
    result = plan(state, live(state))
    assert [c.action for c in changes_of(result, ORDERS) + changes_of(result, CREATED)] == [
        "no-op"
    ] * 4


def test_live_setting_left_out_of_the_manifest_is_updated_to_inherited() -> None:
    result = plan(desired(), live(desired(), **on_both(ORDERS, message_ttl=3_600)))
    assert [c.fields for c in result.pending] == [(FieldChange("message_ttl", 3_600, None),)] * 2


def test_subscription_initial_position_never_shows_as_a_change() -> None:
    state = desired()
    assert state["east"][BILLING]["initial_position"] == "earliest"
    # Pulsar does not keep it, so live state has none; or an older one.
    gone = live(state)
    for cluster in gone.values():
        del cluster[BILLING]["initial_position"]
    assert plan(state, gone).pending == []
    assert plan(state, live(state, **on_both(BILLING, initial_position="latest"))).pending == []
    [created, _] = changes_of(plan(state, {}), BILLING)
    assert "initial_position" not in {f.field for f in created.fields}
    assert created.desired["initial_position"] == "earliest"  # what create uses


def test_subscription_setting_change_is_an_update() -> None:
    result = plan(desired(), live(desired(), **on_both(BILLING, max_deliveries=3)))
    assert [c.fields for c in result.pending] == [(FieldChange("max_deliveries", 3, 5),)] * 2


def test_topic_without_schema_in_the_manifest_ignores_the_live_schema() -> None:
    state = desired()
    assert "schema" not in state["east"][CREATED]
    other = Schema(type="STRING")
    assert plan(state, live(state, **on_both(CREATED, schema=other))).pending == []


def test_topic_with_schema_in_the_manifest_updates_a_different_live_schema() -> None:
    wanted = {"type": "JSON", "definition": {"type": "record", "name": "Order", "fields": []}}
    state = desired(topic={"schema": wanted})
    result = plan(state, live(state, **on_both(CREATED, schema=Schema(type="STRING"))))
    assert [(c.cluster, c.action, [f.field for f in c.fields]) for c in result.pending] == [
        ("east", "update", ["schema"]),
        ("west", "update", ["schema"]),
    ]


# Destructive updates ---------------------------------------------------------------------


def test_removing_a_cluster_from_namespace_replication_is_destructive_on_both() -> None:
    result = plan(desired(namespace={"replication": ["east"]}), live(desired()))
    namespace_changes = changes_of(result, ORDERS)
    assert [c.cluster for c in namespace_changes] == ["east", "west"]
    for change in namespace_changes:
        assert change.action == "update"
        assert change.fields == (FieldChange("replication", ("east", "west"), ("east",)),)
        assert change.destructive is not None and "west" in change.destructive
    assert result.destructive == namespace_changes


def test_adding_a_cluster_to_replication_is_not_destructive() -> None:
    state = desired()
    result = plan(state, live(state, **on_both(ORDERS, replication=("east",))))
    assert len(result.pending) == 2
    assert result.destructive == []


def test_topic_replication_override_that_drops_a_cluster_is_destructive() -> None:
    # The topic inherited east+west from its namespace; now it stays in east.
    result = plan(desired(topic={"replication": ["east"]}), live(desired()))
    [change] = [c for c in changes_of(result, CREATED) if c.action != "no-op"]
    assert (change.cluster, change.action) == ("east", "update")
    assert change.fields == (FieldChange("replication", None, ("east",)),)
    assert change.destructive is not None and "west" in change.destructive


def test_topic_override_dropping_an_explicit_cluster_is_destructive() -> None:
    state = desired(topic={"replication": ["east"]})
    result = plan(state, live(state, east={CREATED: {"replication": ("east", "west")}}))
    [change] = result.pending
    assert change.fields == (FieldChange("replication", ("east", "west"), ("east",)),)
    assert change.destructive is not None and "west" in change.destructive


def test_topic_override_matching_its_namespace_is_not_destructive() -> None:
    result = plan(desired(topic={"replication": ["west", "east"]}), live(desired()))
    assert [c.fields for c in result.pending] == [
        (FieldChange("replication", None, ("east", "west")),)
    ] * 2
    assert result.destructive == []


def test_partition_increase_is_an_update_flagged_destructive() -> None:
    state = desired(topic={"partitions": 8})
    result = plan(state, live(state, **on_both(CREATED, partitions=4)))
    assert len(result.pending) == 2
    for change in result.pending:
        assert change.action == "update"
        assert change.fields == (FieldChange("partitions", 4, 8),)
        assert change.destructive is not None and "partition count" in change.destructive
    assert live_problems(state, live(state, **on_both(CREATED, partitions=4))) == []


def test_tenant_leaving_a_cluster_is_destructive() -> None:
    state = desired()
    result = plan(state, live(state, **on_both(TENANT, clusters=("east", "south", "west"))))
    assert len(result.destructive) == 2
    assert all("south" in (c.destructive or "") for c in result.destructive)


# Live problems ---------------------------------------------------------------------------


def test_live_problems_report_a_partition_decrease() -> None:
    state = desired()
    assert live_problems(state, live(state, **on_both(CREATED, partitions=8))) == [
        "Topic acme/orders/created on east: partitions cannot decrease (8 → 4)",
        "Topic acme/orders/created on west: partitions cannot decrease (8 → 4)",
    ]


def test_live_problems_report_an_unpartitioned_topic_asked_to_be_partitioned() -> None:
    state = desired()
    problems = live_problems(state, live(state, east={CREATED: {"partitions": 0}}))
    assert problems == [
        "Topic acme/orders/created on east: exists unpartitioned; Pulsar cannot partition it"
    ]


def test_live_problems_ignore_new_topics_and_matching_partitions() -> None:
    state = desired()
    assert live_problems(state, {}) == []
    assert live_problems(state, live(state)) == []


# Pruning ---------------------------------------------------------------------------------

UNDECLARED = [
    Ref("Subscription", "acme/orders/created/old-sub"),
    Ref("Topic", "acme/orders/old"),
    Ref("Namespace", "acme/legacy"),
]
OUTSIDE = [
    Ref("Cluster", "south"),
    Ref("Tenant", "other"),
    Ref("Namespace", "other/ns"),
    Ref("Topic", "other/ns/t"),
    Ref("Subscription", "other/ns/t/s"),
]


def with_undeclared(state: State) -> State:
    extended = copy(state)
    for cluster in extended.values():
        for ref in UNDECLARED + OUTSIDE:
            cluster[ref] = {"partitions": 0} if ref.kind == "Topic" else {}
    return extended


def test_prune_deletes_undeclared_objects_of_the_manifests_tenants_only() -> None:
    new_topic = doc("Topic", "acme/orders/new", {})
    result = plan(desired(extra=(new_topic,)), with_undeclared(desired()), prune_tenants=["acme"])
    deletes = [c for c in result.changes if c.action == "delete"]
    # Children before parents, cluster by cluster within each stage.
    assert [(c.ref, c.cluster) for c in deletes] == [
        (ref, cluster) for ref in UNDECLARED for cluster in ("east", "west")
    ]
    assert all(c.destructive for c in deletes)
    assert "subscription and its position" in (deletes[0].destructive or "")
    assert not {c.ref for c in result.changes} & set(OUTSIDE)
    # Every create and update runs before the first delete.
    actions = [c.action for c in result.changes]
    assert actions.index("delete") > max(i for i, a in enumerate(actions) if a == "create")
    assert [c.cluster for c in result.changes if c.action == "create"] == ["east", "west"]


def test_without_prune_undeclared_objects_are_left_alone() -> None:
    result = plan(desired(), with_undeclared(desired()))
    assert result.pending == []
    assert {c.ref for c in result.changes}.isdisjoint(UNDECLARED + OUTSIDE)


def test_prune_never_deletes_tenants_or_peer_clusters() -> None:
    result = plan(desired(), with_undeclared(desired()), prune_tenants=["acme", "other"])
    deleted = {c.ref.kind for c in result.changes if c.action == "delete"}
    assert deleted == {"Namespace", "Topic", "Subscription"}


# Rendering -------------------------------------------------------------------------------


@pytest.fixture
def small_plan() -> Plan:
    state = desired(topic={"partitions": 8})
    actual = live(
        state,
        east={
            ORDERS: {"retention": Retention(time=259_200, size=10_240), "message_ttl": 3_600},
            CREATED: {"partitions": 4},
        },
        west={CREATED: {"partitions": 4}},
    )
    return plan(state, actual)


def test_plan_text_shows_old_and_new_values_and_destructive_changes(small_plan: Plan) -> None:
    text = plan_text(small_plan)
    assert text.startswith("Plan: 0 to create, 3 to update, 0 to delete, 7 unchanged.\n")
    assert "2 destructive change(s)" in text
    assert "cluster east:\n  ~ update Namespace acme/orders\n" in text
    assert "      retention: {time: 3d, size: 10G} → {time: 7d, size: 10G}\n" in text
    assert "      message_ttl: 1h → (inherited)\n" in text
    assert "      partitions: 4 → 8\n" in text
    assert "      ! destructive: changes the partition count" in text
    assert "No changes" not in text
    assert "Tenant acme" not in text  # no-ops only when verbose
    assert "    no-op Tenant acme" in plan_text(small_plan, verbose=True)


def test_plan_text_of_creates_lists_new_values() -> None:
    text = plan_text(plan(desired(), {}))
    assert "  + create Namespace acme/orders\n      replication: [east, west]\n" in text
    assert "      retention: {time: 7d, size: 10G}\n" in text


@pytest.mark.parametrize("empty", [Plan(()), plan(desired(), live(desired()))])
def test_plan_text_says_no_changes_when_nothing_is_pending(empty: Plan) -> None:
    text = plan_text(empty)
    assert "No changes: the clusters match the manifests." in text
    assert "cluster " not in text and "destructive" not in text


def test_plan_json_groups_changes_by_cluster_in_manifest_units(small_plan: Plan) -> None:
    body = plan_json(small_plan)
    assert body["summary"] == {"create": 0, "update": 3, "delete": 0, "no-op": 7}
    assert body["destructive"] == 2
    assert list(body["clusters"]) == ["east", "west"]
    assert len(body["clusters"]["east"]) + len(body["clusters"]["west"]) == 10
    namespace = next(c for c in body["clusters"]["east"] if c["name"] == "acme/orders")
    assert namespace["action"] == "update" and namespace["kind"] == "Namespace"
    assert namespace["changes"] == [
        {
            "field": "retention",
            "old": {"time": "3d", "size": "10G"},
            "new": {"time": "7d", "size": "10G"},
        },
        {"field": "message_ttl", "old": "1h", "new": None},
    ]
    west_topic = next(c for c in body["clusters"]["west"] if c["kind"] == "Topic")
    assert west_topic["destructive"] is True
    assert "partition count" in west_topic["reason"]
