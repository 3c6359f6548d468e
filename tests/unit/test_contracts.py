"""Contracts: values checked against a topic's schema, encoded, decoded. No broker."""

import json
from typing import Any

import pytest

from broker_gateway.errors import SchemaNotSupported
from broker_gateway.pulsar.contracts import Contract

ORDER = {
    "type": "record",
    "name": "Order",
    "namespace": "acme",
    "fields": [
        {"name": "order_id", "type": "string"},
        {"name": "amount_cents", "type": "long"},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
        {"name": "lines", "type": {"type": "array", "items": {
            "type": "record", "name": "Line", "fields": [
                {"name": "sku", "type": "string"},
                {"name": "quantity", "type": "int"},
            ]}}},
        {"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}},
        {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "shipping", "type": ["null", {"type": "record", "name": "Address", "fields": [
            {"name": "city", "type": "string"},
        ]}], "default": None},
        {"name": "billing", "type": ["null", "Address"], "default": None},
    ],
}  # fmt: skip

GOOD: dict[str, Any] = {
    "order_id": "o-1",
    "amount_cents": 1250,
    "status": "NEW",
    "lines": [{"sku": "a", "quantity": 2}],
    "placed_at": 1_764_547_200_000,
    "shipping": {"city": "Lyon"},
}


def contract(schema_type: str, definition: dict[str, Any] | None = None) -> Contract:
    return Contract.of(3, schema_type, "" if definition is None else json.dumps(definition))


@pytest.mark.parametrize("schema_type", ["JSON", "AVRO"])
def test_a_conforming_record_passes_and_round_trips(schema_type: str) -> None:
    order = contract(schema_type, ORDER)
    assert order.failures_of_value(GOOD) == []
    decoded = order.decode(order.encode(GOOD))
    assert decoded["order_id"] == "o-1"
    assert decoded["lines"] == [{"sku": "a", "quantity": 2}]
    assert order.failures_of_bytes(order.encode(GOOD)) == []


@pytest.mark.parametrize(
    ("change", "path", "error"),
    [
        ({"amount_cents": "12.50"}, "$.amount_cents", "expected long"),
        ({"amount_cents": True}, "$.amount_cents", "expected long"),
        ({"amount_cents": 1.5}, "$.amount_cents", "expected long"),
        ({"status": "LOST"}, "$.status", "expected one of NEW, PAID"),
        ({"lines": [{"sku": "a", "quantity": "2"}]}, "$.lines[0].quantity", "expected int"),
        ({"lines": [{"sku": "a"}]}, "$.lines[0].quantity", "required, and missing"),
        ({"lines": {"sku": "a"}}, "$.lines", "expected an array"),
        ({"tags": {"k": 1}}, '$.tags["k"]', "expected string"),
        ({"note": 5}, "$.note", "expected null or string"),
        ({"placed_at": "yesterday"}, "$.placed_at", "expected long (timestamp-millis)"),
        ({"shipping": {"town": "Lyon"}}, "$.shipping.city", "required, and missing"),
        ({"billing": {"city": 7}}, "$.billing.city", "expected string"),
        ({"surprise": 1}, "$.surprise", "not in the schema"),
        ({"shipping": {"city": "Lyon", "zip": "69001"}}, "$.shipping.zip", "not in the schema"),
    ],
)
@pytest.mark.parametrize("schema_type", ["JSON", "AVRO"])
def test_each_failure_is_named_by_its_json_path(
    schema_type: str, change: dict[str, Any], path: str, error: str
) -> None:
    assert (path, error) in contract(schema_type, ORDER).failures_of_value({**GOOD, **change})


def test_every_failure_is_listed_not_only_the_first() -> None:
    bad = {**GOOD, "amount_cents": "x", "status": "LOST"}
    del bad["order_id"]
    assert contract("JSON", ORDER).failures_of_value(bad) == [
        ("$.order_id", "required, and missing"),
        ("$.amount_cents", "expected long"),
        ("$.status", "expected one of NEW, PAID"),
    ]


def test_a_value_that_is_not_an_object_is_refused_at_the_root() -> None:
    order = contract("JSON", ORDER)
    assert order.failures_of_value("just a string") == [
        ("$", "expected an object (record acme.Order)")
    ]
    assert order.failures_of_value({"nonsense": [1, 2, 3]})[0] == (
        "$.order_id",
        "required, and missing",
    )


def test_avro_bytes_must_decode_under_the_schema() -> None:
    order = contract("AVRO", ORDER)
    assert order.failures_of_bytes(b"\xff\xff\xff")[0][0] == "$"
    assert order.failures_of_bytes(order.encode(GOOD) + b"\x00")[0][0] == "$"


def test_json_bytes_must_parse_and_conform() -> None:
    order = contract("JSON", ORDER)
    assert order.failures_of_bytes(b"{not json")[0][0] == "$"
    assert order.failures_of_bytes(b'{"order_id": "x"}')[0] == (
        "$.amount_cents",
        "required, and missing",
    )


@pytest.mark.parametrize(
    ("schema_type", "value", "payload"),
    [
        ("STRING", "héllo", "héllo".encode()),
        ("BOOLEAN", True, b"\x01"),
        ("INT8", -2, b"\xfe"),
        ("INT32", 258, b"\x00\x00\x01\x02"),
        ("INT64", 1, b"\x00" * 7 + b"\x01"),
        ("DOUBLE", 0.5, b"\x3f\xe0" + b"\x00" * 6),
    ],
)
def test_primitives_use_pulsars_encodings(schema_type: str, value: Any, payload: bytes) -> None:
    primitive = contract(schema_type)
    assert primitive.failures_of_value(value) == []
    assert primitive.encode(value) == payload
    assert primitive.decode(payload) == value


@pytest.mark.parametrize(
    ("schema_type", "value"),
    [
        ("STRING", 5),
        ("BOOLEAN", 1),
        ("INT8", 128),
        ("INT64", 2**63),
        ("INT64", "1"),
        ("FLOAT", True),
        ("FLOAT", 1e39),
        ("DOUBLE", 10**400),
    ],
)
def test_primitives_refuse_other_values(schema_type: str, value: Any) -> None:
    assert contract(schema_type).failures_of_value(value)[0][0] == "$"


def test_avro_values_render_as_json_for_reads() -> None:
    order = contract("AVRO", ORDER)
    rendered = json.loads(order.render(order.encode(GOOD)) or b"")
    assert rendered["amount_cents"] == 1250
    assert rendered["placed_at"].startswith("2025-12-01T")
    assert order.render(b"\xff") is None


@pytest.mark.parametrize("schema_type", ["PROTOBUF", "PROTOBUF_NATIVE", "KEY_VALUE"])
def test_unsupported_types_say_so(schema_type: str) -> None:
    with pytest.raises(SchemaNotSupported, match=schema_type):
        Contract.of(1, schema_type, "{}").supported()


def test_bytes_and_no_schema_are_not_enforced() -> None:
    assert not Contract.of(0, "BYTES", "").enforced
    assert Contract.of(0, "STRING", "").enforced
