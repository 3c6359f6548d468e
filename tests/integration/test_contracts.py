"""Data contracts: a topic's schema, declared in manifests, enforced on publish."""

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pulsar
import pytest
from pulsar.schema import AvroSchema, JsonSchema, Long, Record, String

from tests.integration.conftest import Gateway, PulsarCluster, start_gateway, stop_gateway

V1 = "broker-gateway/v1"
REFRESH_S = 2


@pytest.fixture(scope="module")
def replicas(pulsar_cluster: PulsarCluster) -> Iterator[list[Gateway]]:
    """Two replicas on east, as behind a load balancer."""
    gateways = [start_gateway(pulsar_cluster, schema_refresh_s=str(REFRESH_S)) for _ in range(2)]
    yield gateways
    for gateway in gateways:
        stop_gateway(gateway)


@pytest.fixture
def http(replicas: list[Gateway]) -> Iterator[httpx.Client]:
    with replicas[0].client(timeout=60) as client:
        yield client


class Order(Record):  # type: ignore[misc]
    order_id = String(required=True)
    amount_cents = Long(required=True)
    note = String()  # nullable


ORDER_FIELDS: list[dict[str, Any]] = [
    {"name": "order_id", "type": "string"},
    {"name": "amount_cents", "type": "long"},
    {"name": "note", "type": ["null", "string"], "default": None},
]


def record(*fields: dict[str, Any], name: str = "Order") -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields)}


def base(tenant: str, **namespace_spec: Any) -> list[dict[str, Any]]:
    """A tenant on east and its namespace `app`."""

    def document(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": V1, "kind": kind, "metadata": {"name": name}, "spec": spec}

    return [
        document("Tenant", tenant, {"clusters": ["east"]}),
        document("Namespace", f"{tenant}/app", namespace_spec),
    ]


def topic_document(topic: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    spec = {"schema": schema} if schema else {}
    return {"apiVersion": V1, "kind": "Topic", "metadata": {"name": topic}, "spec": spec}


def declare(
    http: httpx.Client, schemas: dict[str, dict[str, Any]], **namespace_spec: Any
) -> dict[str, str]:
    """Apply manifests: a fresh tenant on east, namespace `app`, one topic per schema."""
    tenant = f"tc-{uuid.uuid4().hex[:10]}"
    topics = {name: f"{tenant}/app/{name}" for name in schemas}
    documents = base(tenant, **namespace_spec) + [
        topic_document(topics[name], schema) for name, schema in schemas.items()
    ]
    applied = http.post("/v1/manifests/apply", json=documents)
    assert applied.status_code == 200, applied.text
    return topics


def evolve(http: httpx.Client, topic: str, schema: dict[str, Any]) -> None:
    """Apply a new schema to a topic made by `declare`."""
    documents = [*base(topic.split("/")[0]), topic_document(topic, schema)]
    applied = http.post("/v1/manifests/apply", json=documents)
    assert applied.status_code == 200, applied.text


def publish(
    http: httpx.Client, topic: str, *messages: dict[str, Any], **extra: Any
) -> httpx.Response:
    return http.post(f"/v1/topics/{topic}/messages", json={"messages": list(messages), **extra})


def read_values(http: httpx.Client, topic: str) -> list[Any]:
    page = http.get(f"/v1/topics/{topic}/messages", params={"limit": 100})
    assert page.status_code == 200, page.text
    return [m.get("value", m.get("data")) for m in page.json()["messages"]]


def schema_versions(admin: httpx.Client, topic: str) -> list[Any]:
    response = admin.get(f"/schemas/{topic}/schemas")
    response.raise_for_status()
    return [s["version"] for s in response.json()["getSchemaResponses"]]


GOOD = {"order_id": "o-1", "amount_cents": 1250}


@pytest.mark.parametrize("schema_type", ["JSON", "AVRO"])
def test_a_value_off_the_contract_is_refused_with_each_failure_and_nothing_is_published(
    http: httpx.Client, schema_type: str
) -> None:
    topic = declare(http, {"orders": {"type": schema_type, "definition": record(*ORDER_FIELDS)}})[
        "orders"
    ]
    refused = publish(
        http,
        topic,
        {"value": GOOD},
        {"value": {"nonsense": [1, 2, 3]}},
        {"value": "just a string"},
        {"value": {**GOOD, "amount_cents": "12.50", "extra": True}},
    )
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert refused.headers["content-type"] == "application/problem+json"
    assert problem["code"] == "schema_violation"
    assert problem["schema_version"] == 0
    assert {(e["index"], e["path"], e["error"]) for e in problem["errors"]} == {
        (1, "$.order_id", "required, and missing"),
        (1, "$.amount_cents", "required, and missing"),
        (1, "$.nonsense", "not in the schema"),
        (2, "$", "expected an object (record Order)"),
        (3, "$.amount_cents", "expected long"),
        (3, "$.extra", "not in the schema"),
    }
    assert read_values(http, topic) == [], "a refused request published something"

    accepted = publish(http, topic, {"value": GOOD}, {"value": {**GOOD, "note": "gift"}})
    assert accepted.status_code == 200, accepted.text
    assert read_values(http, topic) == [
        {**GOOD, "note": None} if schema_type == "AVRO" else GOOD,
        {**GOOD, "note": "gift"},
    ]


@pytest.mark.parametrize("schema", [JsonSchema, AvroSchema])
def test_a_typed_native_consumer_reads_what_the_gateway_published(
    http: httpx.Client, admin: httpx.Client, native: pulsar.Client, schema: Any
) -> None:
    contract = schema(Order)
    definition = json.loads(contract.schema_info().schema())
    schema_type = "JSON" if schema is JsonSchema else "AVRO"
    topic = declare(http, {"orders": {"type": schema_type, "definition": definition}})["orders"]
    versions = schema_versions(admin, topic)
    consumer = native.subscribe(
        f"persistent://{topic}",
        "typed",
        schema=contract,
        initial_position=pulsar.InitialPosition.Earliest,
    )
    try:
        sent = publish(
            http, topic, {"value": {"order_id": "o-7", "amount_cents": 99, "note": None}}
        )
        assert sent.status_code == 200, sent.text
        message = consumer.receive(10_000)
        order = message.value()
        assert isinstance(order, Order)
        assert (order.order_id, order.amount_cents, order.note) == ("o-7", 99, None)
        consumer.acknowledge(message)
    finally:
        consumer.close()
    assert schema_versions(admin, topic) == versions, "publishing registered a schema"


def test_avro_values_round_trip_through_read_and_sse(http: httpx.Client) -> None:
    status = {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}
    line = record({"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}, name="Line")
    definition = record(
        *ORDER_FIELDS,
        {"name": "status", "type": status},
        {"name": "lines", "type": {"type": "array", "items": line}},
        {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    )
    topic = declare(http, {"orders": {"type": "AVRO", "definition": definition}})["orders"]
    value = {
        **GOOD,
        "note": "n",
        "status": "PAID",
        "lines": [{"sku": "a", "qty": 2}],
        "placed_at": 1_764_547_200_000,
    }
    assert publish(http, topic, {"value": value}).status_code == 200
    expected = {**value, "placed_at": "2025-12-01T00:00:00+00:00"}
    assert read_values(http, topic) == [expected]
    with http.stream(
        "GET", f"/v1/topics/{topic}/stream", params={"position": "earliest"}
    ) as stream:
        data = next(line for line in stream.iter_lines() if line.startswith("data: "))
    assert json.loads(data.removeprefix("data: "))["value"] == expected


def test_a_pinned_schema_version_is_checked_and_published_with(
    http: httpx.Client, native: pulsar.Client
) -> None:
    v0 = {"type": "JSON", "definition": record(*ORDER_FIELDS)}
    topic = declare(http, {"orders": v0})["orders"]
    with_currency = [
        *ORDER_FIELDS,
        {"name": "currency", "type": ["null", "string"], "default": None},
    ]
    evolve(http, topic, {"type": "JSON", "definition": record(*with_currency)})

    euros = {**GOOD, "currency": "EUR"}
    old = publish(http, topic, {"value": euros}, schema_version=0)
    assert old.status_code == 422
    assert old.json()["errors"] == [
        {"index": 0, "path": "$.currency", "error": "not in the schema"}
    ]
    assert old.json()["schema_version"] == 0
    assert publish(http, topic, {"value": GOOD}, schema_version=0).status_code == 200
    assert publish(http, topic, {"value": euros}, schema_version=1).status_code == 200
    assert publish(http, topic, {"value": euros}).status_code == 200  # latest: 1
    unknown = publish(http, topic, {"value": GOOD}, schema_version=7)
    assert (unknown.status_code, unknown.json()["code"]) == (422, "schema_version_unknown")

    reader = native.create_reader(f"persistent://{topic}", pulsar.MessageId.earliest)
    try:
        stamped = [reader.read_next(10_000)._message.int_schema_version() for _ in range(3)]
    finally:
        reader.close()
    assert stamped == [0, 1, 1]


def test_a_schema_applied_through_one_replica_reaches_the_other(
    replicas: list[Gateway], http: httpx.Client
) -> None:
    topic = declare(http, {"orders": {"type": "JSON", "definition": record(*ORDER_FIELDS)}})[
        "orders"
    ]
    with replicas[1].client(timeout=60) as other:
        assert publish(other, topic, {"value": GOOD}).status_code == 200  # cached there now
        narrowed = record(*ORDER_FIELDS, {"name": "currency", "type": "string", "default": "EUR"})
        evolve(http, topic, {"type": "JSON", "definition": narrowed})
        priced = {**GOOD, "currency": "USD"}
        assert publish(http, topic, {"value": priced}).status_code == 200  # at once, here
        deadline = time.monotonic() + REFRESH_S + 10
        while (answer := publish(other, topic, {"value": priced})).status_code == 422:
            assert time.monotonic() < deadline, "the other replica kept the old schema"
            time.sleep(0.2)
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("schema_type", "value", "stored", "refused"),
    [
        ("STRING", "héllo", "héllo".encode(), 5),
        ("INT64", 42, (42).to_bytes(8, "big"), "42"),
        ("INT32", -1, b"\xff\xff\xff\xff", 2**31),
        ("DOUBLE", 0.5, b"\x3f\xe0" + bytes(6), "0.5"),
    ],
)
def test_primitive_schemas_take_a_value_of_their_kind_in_pulsars_encoding(
    http: httpx.Client,
    native: pulsar.Client,
    schema_type: str,
    value: Any,
    stored: bytes,
    refused: Any,
) -> None:
    topic = declare(http, {"values": {"type": schema_type}})["values"]
    wrong = publish(http, topic, {"value": refused})
    assert (wrong.status_code, wrong.json()["code"]) == (422, "schema_violation")
    assert publish(http, topic, {"value": value}).status_code == 200
    reader = native.create_reader(f"persistent://{topic}", pulsar.MessageId.earliest)
    try:
        assert reader.read_next(10_000).data() == stored
    finally:
        reader.close()
    assert read_values(http, topic) == [value]


def test_data_on_a_struct_topic_must_decode_under_its_schema(http: httpx.Client) -> None:
    topics = declare(
        http,
        {
            "json": {"type": "JSON", "definition": record(*ORDER_FIELDS)},
            "avro": {"type": "AVRO", "definition": record(*ORDER_FIELDS)},
        },
    )
    as_json = base64.b64encode(json.dumps(GOOD).encode()).decode()
    assert publish(http, topics["json"], {"data": as_json}).status_code == 200
    for topic in topics.values():
        garbage = publish(http, topic, {"data": base64.b64encode(b"\xff\x00garbage").decode()})
        assert (garbage.status_code, garbage.json()["code"]) == (422, "schema_violation")
    raw = http.post(
        f"/v1/topics/{topics['json']}/messages",
        content=b'{"order_id": 1}',
        headers={"content-type": "application/octet-stream"},
    )
    assert raw.status_code == 422
    assert raw.json()["errors"][0]["path"] == "$.order_id"


def test_protobuf_topics_are_refused_clearly(http: httpx.Client, admin: httpx.Client) -> None:
    topic = declare(http, {"proto": {}})["proto"]
    definition = json.dumps(record({"name": "id", "type": "string"}, name="Proto"))
    admin.post(
        f"/schemas/{topic}/schema",
        json={"type": "PROTOBUF", "schema": definition, "properties": {}},
    ).raise_for_status()
    refused = publish(http, topic, {"value": {"id": "x"}})
    assert (refused.status_code, refused.json()["code"]) == (422, "schema_not_supported")
    assert "PROTOBUF" in refused.json()["detail"]


def test_topics_without_a_schema_take_any_json_as_before(http: httpx.Client) -> None:
    topic = declare(http, {"free": {}})["free"]
    assert publish(http, topic, {"value": {"nonsense": [1]}}, {"value": "s"}).status_code == 200
    assert read_values(http, topic) == [{"nonsense": [1]}, "s"]


def test_with_validation_enforced_pulsar_itself_refuses_a_schemaless_producer(
    http: httpx.Client, native: pulsar.Client
) -> None:
    topic = declare(
        http,
        {"orders": {"type": "JSON", "definition": record(*ORDER_FIELDS)}},
        schema_validation_enforced=True,
    )["orders"]
    with pytest.raises(pulsar.IncompatibleSchema):
        native.create_producer(f"persistent://{topic}")
    assert publish(http, topic, {"value": GOOD}).status_code == 200
    exported = http.get("/v1/manifests/export", params={"tenant": topic.split("/")[0]})
    assert exported.status_code == 200, exported.text
    [namespace] = [d for d in exported.json()["documents"] if d["kind"] == "Namespace"]
    assert namespace["spec"]["schema_validation_enforced"] is True
