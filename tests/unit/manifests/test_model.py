from pathlib import Path
from typing import Any

import pytest

from broker_gateway.errors import InvalidManifest
from broker_gateway.manifests.loader import load_paths, parse_text
from broker_gateway.manifests.model import Manifests, build

EXAMPLES = Path(__file__).resolve().parents[3] / "topics"
CLUSTERS = ["east", "west"]


def doc(kind: str, name: str, spec: dict[str, Any] | None = None, **metadata: str) -> Any:
    document: dict[str, Any] = {
        "apiVersion": "broker-gateway/v1",
        "kind": kind,
        "metadata": {"name": name, **metadata},
    }
    if spec is not None:
        document["spec"] = spec
    return document


def tenant(name: str = "acme", **spec: Any) -> Any:
    return doc("Tenant", name, {"clusters": ["east", "west"], **spec})


def namespace(name: str = "acme/orders", **spec: Any) -> Any:
    return doc("Namespace", name, spec)


def topic(name: str = "acme/orders/created", **spec: Any) -> Any:
    return doc("Topic", name, spec)


def subscription(name: str = "billing", on: str = "acme/orders/created", **spec: Any) -> Any:
    return doc("Subscription", name, spec, topic=on)


def build_docs(*documents: Any, clusters: list[str] = CLUSTERS) -> Manifests:
    return build([(f"test#{i}", d) for i, d in enumerate(documents, start=1)], clusters)


def errors_of(*documents: Any, clusters: list[str] = CLUSTERS) -> list[str]:
    with pytest.raises(InvalidManifest) as caught:
        build_docs(*documents, clusters=clusters)
    errors: list[str] = caught.value.extra["errors"]
    assert errors, "an InvalidManifest names at least one problem"
    return errors


def the_error(*documents: Any, clusters: list[str] = CLUSTERS) -> str:
    errors = errors_of(*documents, clusters=clusters)
    assert len(errors) == 1, errors
    return errors[0]


# Valid sets ------------------------------------------------------------------------------


def test_example_manifests_are_valid_for_east_and_west() -> None:
    manifests = build(load_paths([EXAMPLES]), CLUSTERS)
    assert set(manifests.tenants) == {"acme"}
    assert set(manifests.namespaces) == {"acme/orders", "acme/audit"}
    assert set(manifests.topics) == {
        "acme/orders/created",
        "acme/orders/shipped",
        "acme/audit/logins",
    }
    assert set(manifests.subscriptions) == {
        "acme/orders/created/billing",
        "acme/orders/created/fulfilment",
    }
    # The audit namespace overrides the tenant's replication and stays in east.
    assert manifests.topic_clusters("acme/audit/logins") == ("east",)
    assert manifests.topic_clusters("acme/orders/created") == ("east", "west")


def test_example_manifests_are_invalid_for_a_gateway_without_west() -> None:
    with pytest.raises(InvalidManifest) as caught:
        build(load_paths([EXAMPLES]), ["east"])
    assert any("unknown cluster west" in e for e in caught.value.extra["errors"])


def test_a_complete_small_set_is_valid_and_reads_units() -> None:
    manifests = build_docs(
        tenant(replication=["east", "west"]),
        namespace(retention={"time": "7d", "size": "10G"}, backlog_quota={"size": "5G"}),
        topic(partitions=4, schema={"type": "JSON", "definition": '{"type": "record"}'}),
        subscription(dead_letter_topic="acme/orders/dead"),
    )
    retention = manifests.namespaces["acme/orders"].spec.retention
    assert retention is not None and (retention.time, retention.size) == (604_800, 10_240)
    schema = manifests.topics["acme/orders/created"].spec.schema_
    assert schema is not None and schema.definition == {"type": "record"}
    assert "acme/orders/created/billing" in manifests.subscriptions


def test_same_subscription_name_on_two_topics_is_not_a_duplicate() -> None:
    manifests = build_docs(
        tenant(),
        namespace(),
        topic("acme/orders/created"),
        topic("acme/orders/shipped"),
        subscription("billing", on="acme/orders/created"),
        subscription("billing", on="acme/orders/shipped"),
    )
    assert len(manifests.subscriptions) == 2


# Clusters and replication ----------------------------------------------------------------


def test_unknown_cluster_is_rejected() -> None:
    error = the_error(tenant(clusters=["east", "north"]))
    assert "Tenant acme" in error and "unknown cluster north" in error


def test_cluster_listed_twice_in_a_tenant_is_rejected() -> None:
    assert "listed twice" in the_error(tenant(clusters=["east", "east"]))


@pytest.mark.parametrize(
    ("documents", "where"),
    [
        ([tenant(clusters=["east"], replication=["east", "west"])], "Tenant acme"),
        ([tenant(clusters=["east"]), namespace(replication=["west"])], "Namespace acme/orders"),
        (
            [tenant(clusters=["east"]), namespace(), topic(replication=["east", "west"])],
            "Topic acme/orders/created",
        ),
    ],
    ids=["tenant", "namespace", "topic"],
)
def test_replication_outside_the_tenants_clusters_is_rejected(
    documents: list[Any], where: str
) -> None:
    error = the_error(*documents)
    assert error.startswith(where)
    assert "replication to west" in error and "tenant's clusters" in error


def test_empty_replication_is_rejected() -> None:
    assert "at least one cluster" in the_error(tenant(), namespace(replication=[]))


def test_replication_listing_a_cluster_twice_is_rejected() -> None:
    assert "twice" in the_error(tenant(), namespace(replication=["east", "west", "west"]))


# Names and references --------------------------------------------------------------------


@pytest.mark.parametrize(
    "documents",
    [
        [tenant(), tenant()],
        [tenant(), namespace(), namespace()],
        [tenant(), namespace(), topic(), topic()],
        [tenant(), namespace(), topic(), subscription(), subscription()],
    ],
    ids=["tenant", "namespace", "topic", "subscription"],
)
def test_duplicate_names_are_rejected(documents: list[Any]) -> None:
    error = the_error(*documents)
    assert error.startswith(f"test#{len(documents)}:")  # the second declaration
    assert "declared twice" in error


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        ([namespace()], "its tenant acme is not declared"),
        ([tenant(), topic()], "its namespace acme/orders is not declared"),
        (
            [tenant(), namespace(), subscription()],
            "its topic acme/orders/created is not declared",
        ),
    ],
    ids=["namespace-without-tenant", "topic-without-namespace", "subscription-without-topic"],
)
def test_undeclared_parent_is_rejected(documents: list[Any], message: str) -> None:
    assert message in the_error(*documents)


@pytest.mark.parametrize(
    "document",
    [
        tenant("ac/me"),
        tenant("ac me"),
        tenant("acme*"),
        tenant(""),
        tenant("a" * 256),
        namespace("acme/or/ders"),
        namespace("acme"),
        topic("acme/orders"),
        topic("acme/orders/cre ated"),
        subscription("bill/ing"),
        subscription("billing", on="acme/created"),
    ],
    ids=lambda d: f"{d['kind']}:{d['metadata']['name'][:20]}",
)
def test_bad_name_is_rejected(document: Any) -> None:
    error = the_error(document)
    assert error.startswith("test#1 metadata")
    assert "pattern" in error


@pytest.mark.parametrize(
    "documents",
    [
        [tenant("..")],
        [tenant(), namespace("acme/..")],
        [tenant(), namespace(), topic("acme/orders/.")],
    ],
    ids=["tenant", "namespace", "topic"],
)
def test_dot_segment_names_are_rejected(documents: list[Any]) -> None:
    errors_of(*documents)


# Document shape --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Cluster", "tenant", None])
def test_unknown_kind_is_rejected(kind: str | None) -> None:
    document = tenant()
    if kind is None:
        del document["kind"]
    else:
        document["kind"] = kind
    assert "kind must be one of Tenant, Namespace, Topic, Subscription" in the_error(document)


@pytest.mark.parametrize("version", ["broker-gateway/v2", "v1", None])
def test_wrong_api_version_is_rejected(version: str | None) -> None:
    document = tenant()
    document["apiVersion"] = version
    assert the_error(document).startswith("test#1 apiVersion:")


def test_unknown_field_in_spec_is_rejected_with_its_path() -> None:
    error = the_error(tenant(), namespace(retenton={"time": "7d", "size": "1G"}))
    assert error.startswith("test#2 spec.retenton:")
    assert "Extra inputs are not permitted" in error


def test_unknown_field_in_a_subscription_spec_is_rejected() -> None:
    error = the_error(tenant(), namespace(), topic(), subscription(max_delivery=5))
    assert error.startswith("test#4 spec.max_delivery:")


def test_document_that_is_not_a_mapping_is_rejected() -> None:
    assert the_error("just text").startswith("test#1")


# Policies --------------------------------------------------------------------------------


@pytest.mark.parametrize("quota", ["10G", "20G"])
def test_backlog_quota_not_below_retention_size_is_rejected(quota: str) -> None:
    error = the_error(
        tenant(),
        namespace(retention={"time": "7d", "size": "10G"}, backlog_quota={"size": quota}),
    )
    assert "Namespace acme/orders" in error
    assert "backlog_quota.size must be smaller than retention.size" in error


def test_backlog_quota_is_free_under_infinite_retention_size() -> None:
    manifests = build_docs(
        tenant(),
        namespace(retention={"time": "7d", "size": "infinite"}, backlog_quota={"size": "1T"}),
    )
    quota = manifests.namespaces["acme/orders"].spec.backlog_quota
    assert quota is not None and quota.size == 1_048_576


@pytest.mark.parametrize("time", ["90s", "61", "1s"])
def test_retention_time_not_in_whole_minutes_is_rejected(time: str) -> None:
    error = the_error(tenant(), namespace(retention={"time": time, "size": "1G"}))
    assert error.startswith("test#2 spec.retention.time:")
    assert "whole minutes" in error


@pytest.mark.parametrize("time", ["2m", "120s", "infinite", "0"])
def test_retention_time_in_whole_minutes_or_infinite_is_accepted(time: str) -> None:
    manifests = build_docs(tenant(), namespace(retention={"time": time, "size": "1G"}))
    assert manifests.namespaces["acme/orders"].spec.retention is not None


def test_retention_with_a_bad_unit_names_the_field() -> None:
    error = the_error(tenant(), namespace(retention={"time": "7days", "size": "1G"}))
    assert error.startswith("test#2 spec.retention.time:") and "invalid duration" in error


def test_dead_letter_topic_in_another_tenant_is_rejected() -> None:
    error = the_error(
        tenant(), namespace(), topic(), subscription(dead_letter_topic="other/orders/dead")
    )
    assert "Subscription billing on acme/orders/created" in error
    assert "dead_letter_topic must be in the topic's tenant" in error


@pytest.mark.parametrize("dead_letters", ["acme", "acme/dead", "acme/orders/dead/extra"])
def test_dead_letter_topic_must_be_a_topic_path(dead_letters: str) -> None:
    errors_of(tenant(), namespace(), topic(), subscription(dead_letter_topic=dead_letters))


@pytest.mark.parametrize("schema_type", ["JSON", "AVRO", "PROTOBUF"])
def test_struct_schema_without_definition_is_rejected(schema_type: str) -> None:
    error = the_error(tenant(), namespace(), topic(schema={"type": schema_type}))
    assert error.startswith("test#3 spec.schema:")
    assert f"a {schema_type} schema needs a definition" in error


def test_primitive_schema_with_definition_is_rejected() -> None:
    error = the_error(tenant(), namespace(), topic(schema={"type": "STRING", "definition": "x"}))
    assert "a STRING schema takes no definition" in error


def test_partition_count_out_of_range_is_rejected() -> None:
    assert the_error(tenant(), namespace(), topic(partitions=-1)).startswith(
        "test#3 spec.partitions:"
    )


# Reporting -------------------------------------------------------------------------------


def test_every_shape_problem_is_reported_at_once() -> None:
    typo = namespace(retenton={})
    old_version = {**topic(), "apiVersion": "broker-gateway/v0"}
    errors = errors_of(tenant(), typo, old_version)
    assert len(errors) == 2
    assert errors[0].startswith("test#2 spec.retenton:")
    assert errors[1].startswith("test#3 apiVersion:")


def test_every_reference_problem_is_reported_at_once() -> None:
    errors = errors_of(
        tenant(clusters=["east", "north"]),
        namespace("other/orders"),
        topic("acme/missing/created"),
    )
    assert len(errors) == 3
    assert "unknown cluster north" in errors[0]
    assert "its tenant other is not declared" in errors[1]
    assert "its namespace acme/missing is not declared" in errors[2]


def test_invalid_manifest_detail_joins_every_problem() -> None:
    with pytest.raises(InvalidManifest) as caught:
        build_docs(namespace("one/a"), namespace("two/b"))
    assert caught.value.detail == "; ".join(caught.value.extra["errors"])
    assert "one" in caught.value.detail and "two" in caught.value.detail


# Loader ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["kind: [Tenant", "a: b: c", "{", "\t- x"])
def test_text_that_is_not_yaml_is_an_invalid_manifest(text: str) -> None:
    with pytest.raises(InvalidManifest) as caught:
        parse_text(text, "body")
    [error] = caught.value.extra["errors"]
    assert error.startswith("body: ") and "(line " in error


def test_a_json_list_contributes_each_item() -> None:
    raw = parse_text('[{"kind": "Tenant"}, {"kind": "Namespace"}]', "body")
    assert raw == [("body#1", {"kind": "Tenant"}), ("body#2", {"kind": "Namespace"})]


def test_a_documents_wrapper_contributes_each_item() -> None:
    raw = parse_text('{"documents": [{"kind": "Tenant"}, {"kind": "Namespace"}]}', "body")
    assert raw == [("body#1", {"kind": "Tenant"}), ("body#2", {"kind": "Namespace"})]


def test_a_mapping_with_documents_and_more_is_one_document() -> None:
    raw = parse_text('{"documents": [], "kind": "Tenant"}', "body")
    assert raw == [("body#1", {"documents": [], "kind": "Tenant"})]


def test_yaml_stream_skips_empty_documents_and_numbers_the_rest() -> None:
    raw = parse_text(b"---\nkind: Tenant\n---\n---\nkind: Namespace\n", "f.yaml")
    assert raw == [("f.yaml#1", {"kind": "Tenant"}), ("f.yaml#2", {"kind": "Namespace"})]


def test_parsed_text_builds_like_files_do() -> None:
    text = "\n---\n".join(
        [
            "{apiVersion: broker-gateway/v1, kind: Tenant, metadata: {name: acme},"
            " spec: {clusters: [east]}}",
            "{apiVersion: broker-gateway/v1, kind: Namespace, metadata: {name: acme/orders}}",
        ]
    )
    manifests = build(parse_text(text, "body"), CLUSTERS)
    assert list(manifests.namespaces) == ["acme/orders"]


def test_missing_path_is_an_invalid_manifest() -> None:
    with pytest.raises(InvalidManifest) as caught:
        load_paths([EXAMPLES / "missing.yaml"])
    assert caught.value.extra["errors"] == [
        f"{EXAMPLES / 'missing.yaml'}: no such file or directory"
    ]


def test_a_configmap_volume_is_read_once_without_its_hidden_copies(tmp_path: Path) -> None:
    """Kubelet mounts a ConfigMap as `name -> ..data/name`, `..data -> ..<timestamp>/`."""
    snapshot = tmp_path / "..2026_11_30_10_00_00.123"
    snapshot.mkdir()
    (snapshot / "tenant.yaml").write_text(
        "apiVersion: broker-gateway/v1\nkind: Tenant\nmetadata: {name: acme}\n"
        "spec: {clusters: [east]}\n"
    )
    (tmp_path / "..data").symlink_to(snapshot.name)
    (tmp_path / "tenant.yaml").symlink_to("..data/tenant.yaml")

    raw = load_paths([tmp_path])

    assert [source for source, _ in raw] == [f"{tmp_path / 'tenant.yaml'}#1"]
    assert build(raw, ["east"]).documents()[0].metadata.name == "acme"
