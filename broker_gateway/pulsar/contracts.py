"""Data contracts: a topic's registered Pulsar schema, enforced where data enters.

Pure: no broker. A Contract is one version of a topic's schema. It turns a published JSON
`value` (or base64 `data`) into the bytes Pulsar stores under that schema, refusing what
does not conform, and turns stored bytes back into a JSON value for reads.

- JSON and AVRO schemas are Avro record definitions (Pulsar stores both so). fastavro
  decides whether a value conforms; when it does not, the value is walked to name the
  JSON path of each failure (fastavro names only the first, by record name). Fields the
  schema does not declare are refused too: they are not part of the contract.
- A field may be left out when it has a default or is nullable (a union with "null"), as
  Pulsar's own JSON and Avro readers allow.
- JSON values are stored as JSON text; AVRO values as Avro binary (no container header),
  as Pulsar's Avro schema does. Primitive schemas use Pulsar's encodings (UTF-8 strings,
  big-endian integers and floats, one byte for booleans).
"""

import base64
import io
import json
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import fastavro
import orjson
from fastavro.validation import validate

from broker_gateway.errors import SchemaNotSupported, SchemaViolation
from broker_gateway.pulsar.messages import RAW, OutgoingMessage

# Schema types that carry no contract: the payload is whatever bytes were published.
NO_CONTRACT: Final = frozenset({"NONE", "BYTES", "AUTO", "AUTO_CONSUME", "AUTO_PUBLISH"})
STRUCT: Final = frozenset({"JSON", "AVRO"})


@dataclass(frozen=True, slots=True)
class _Primitive:
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    fits: Callable[[Any], bool]
    expected: str


def _integer(size: int) -> _Primitive:
    low, high = -(2 ** (size * 8 - 1)), 2 ** (size * 8 - 1) - 1

    def decode(payload: bytes) -> int:
        if len(payload) != size:
            raise ValueError(f"{len(payload)} bytes where {size} were expected")
        return int.from_bytes(payload, "big", signed=True)

    return _Primitive(
        encode=lambda v: int(v).to_bytes(size, "big", signed=True),
        decode=decode,
        fits=lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high,
        expected=f"an integer from {low} to {high}",
    )


def _real(fmt: str, largest: float) -> _Primitive:
    packer = struct.Struct(fmt)
    return _Primitive(
        encode=lambda v: packer.pack(v),
        decode=lambda b: packer.unpack(b)[0],
        fits=lambda v: isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= largest,
        expected=f"a number no larger than {largest:g}",
    )


_PRIMITIVES: Final[dict[str, _Primitive]] = {
    "STRING": _Primitive(
        encode=lambda v: v.encode(),
        decode=lambda b: b.decode(),
        fits=lambda v: isinstance(v, str),
        expected="a string",
    ),
    "BOOLEAN": _Primitive(
        encode=lambda v: b"\x01" if v else b"\x00",
        decode=lambda b: {b"\x00": False, b"\x01": True}[b],
        fits=lambda v: isinstance(v, bool),
        expected="true or false",
    ),
    "INT8": _integer(1),
    "INT16": _integer(2),
    "INT32": _integer(4),
    "INT64": _integer(8),
    "FLOAT": _real(">f", 3.4028234663852886e38),
    "DOUBLE": _real(">d", sys.float_info.max),
}


@dataclass(frozen=True)
class Contract:
    """One version of a topic's schema."""

    version: int
    type: str  # Pulsar's schema type, e.g. "JSON", "AVRO", "STRING"
    definition: str  # as Pulsar stores it (the producer must present exactly this)
    _avro: Any = field(default=None, repr=False, compare=False)
    _named: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, version: int, schema_type: str, definition: str) -> "Contract":
        """Raises: SchemaNotSupported for a definition fastavro cannot read."""
        if schema_type not in STRUCT:
            return cls(version, schema_type, definition)
        named: dict[str, Any] = {}
        try:
            parsed = fastavro.parse_schema(json.loads(definition), named_schemas=named)
        except (ValueError, TypeError, fastavro.schema.SchemaParseException) as exc:
            raise SchemaNotSupported(
                f"the topic's {schema_type} schema (version {version}) is not an Avro "
                f"definition the gateway can read: {exc}"
            ) from exc
        return cls(version, schema_type, definition, parsed, named)

    @property
    def enforced(self) -> bool:
        """Whether publishing checks values against it (else bytes pass as they are)."""
        return self.type not in NO_CONTRACT

    def supported(self) -> None:
        """Raises: SchemaNotSupported when messages of this type cannot be made here."""
        if self.enforced and self.type not in STRUCT and self.type not in _PRIMITIVES:
            raise SchemaNotSupported(
                f"the topic's schema is {self.type}, which cannot be published over HTTP "
                "yet; publish with a native Pulsar client"
            )

    # --- in -------------------------------------------------------------------------------

    def failures_of_value(self, value: Any) -> list[tuple[str, str]]:
        """Where `value` (parsed JSON) does not conform: (JSON path, what is wrong)."""
        if self.type in STRUCT:
            # fastavro decides whether the value fits (it ignores members no record
            # declares: a lighter walk finds those); the full walk names where it does not.
            if validate(value, self._avro, raise_errors=False):
                return _undeclared(value, self._avro, "$", self._named)
            return _failures(value, self._avro, "$", self._named) or [
                ("$", "does not conform to the schema")
            ]
        primitive = _PRIMITIVES[self.type]
        return [] if primitive.fits(value) else [("$", f"expected {primitive.expected}")]

    def encode(self, value: Any) -> bytes:
        """The payload of a conforming value (check it with failures_of_value first)."""
        if self.type == "JSON":
            return orjson.dumps(value)
        if self.type == "AVRO":
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, self._avro, value)
            return buffer.getvalue()
        return _PRIMITIVES[self.type].encode(value)

    def failures_of_bytes(self, payload: bytes) -> list[tuple[str, str]]:
        """Where base64 `data` fails: bytes must decode under the schema, to a value that
        conforms."""
        try:
            value = self.decode(payload)
        except ValueError as exc:
            return [("$", f"the bytes do not decode under the schema: {exc}")]
        return self.failures_of_value(value)

    # --- out ------------------------------------------------------------------------------

    def decode(self, payload: bytes) -> Any:
        """The JSON value of a stored payload.

        Raises: ValueError when the bytes do not decode under this schema.
        """
        if self.type == "JSON":
            return orjson.loads(payload)
        if self.type == "AVRO":
            buffer = io.BytesIO(payload)
            try:
                value = fastavro.schemaless_reader(buffer, self._avro, self._avro)
            except (EOFError, IndexError, UnicodeDecodeError, struct.error) as exc:
                raise ValueError(f"not Avro binary of this schema ({exc})") from exc
            if buffer.tell() != len(payload):
                raise ValueError("trailing bytes after the Avro record")
            return value
        primitive = _PRIMITIVES[self.type]
        try:
            return primitive.decode(payload)
        except (UnicodeDecodeError, struct.error, KeyError) as exc:
            raise ValueError(f"not a {self.type} ({exc})") from exc

    def render(self, payload: bytes) -> bytes | None:
        """The JSON text of a stored payload for a read, or None if it does not decode."""
        if self.type == "JSON":
            return None  # stored as JSON already: embedded as is
        try:
            return orjson.dumps(self.decode(payload), default=_json_default)
        except (ValueError, TypeError):
            return None


def _json_default(value: Any) -> Any:
    """What orjson cannot write itself: decimals as strings, Avro bytes as base64."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    return str(value)


def conform(contract: Contract, messages: list[OutgoingMessage]) -> None:
    """Check every message against `contract` and give each its payload under it.

    All or nothing: one message that does not conform refuses the request, and the error
    lists every failure of every message.

    Raises: SchemaViolation, SchemaNotSupported.
    """
    contract.supported()
    failures: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if message.value is RAW:  # base64 `data`, or a raw body: bytes that must decode
            found = contract.failures_of_bytes(message.payload)
        else:
            found = contract.failures_of_value(message.value)
            if not found and contract.type != "JSON":  # JSON: its text is the payload
                message.payload = contract.encode(message.value)
        failures += [{"index": index, "path": path, "error": error} for path, error in found]
    if failures:
        raise SchemaViolation(contract.version, failures)


# --- the walk that names failures --------------------------------------------------------


def _resolve(schema: Any, named: dict[str, Any]) -> Any:
    return named.get(schema, schema) if isinstance(schema, str) else schema


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return str(schema["type"]) if isinstance(schema["type"], str) else "union"
    return str(schema)


def _describe(schema: Any) -> str:
    kind = _kind(schema)
    if isinstance(schema, dict):
        if "logicalType" in schema:
            return f"{kind} ({schema['logicalType']})"
        if kind == "enum":
            return "one of " + ", ".join(schema["symbols"])
        if kind in ("record", "fixed"):
            return f"{kind} {schema.get('name', '')}".strip()
    return kind


def _nullable(schema: Any) -> bool:
    return isinstance(schema, list) and any(_kind(s) == "null" for s in schema)


def _failures(value: Any, schema: Any, path: str, named: dict[str, Any]) -> list[tuple[str, str]]:
    """Each (path, error) of `value` under `schema`; none when it conforms."""
    schema = _resolve(schema, named)
    walk = _WALKS.get(_kind(schema))
    if walk is not None:
        return walk(value, schema, path, named)
    if validate(value, schema, raise_errors=False):  # a leaf: fastavro says
        return []
    return [(path, f"expected {_describe(schema)}")]


Failures = list[tuple[str, str]]


def _record(value: Any, schema: Any, path: str, named: dict[str, Any]) -> Failures:
    if not isinstance(value, Mapping):
        return [(path, f"expected an object ({_describe(schema)})")]
    found: Failures = []
    for declared in schema["fields"]:
        name = declared["name"]
        if name in value:
            found += _failures(value[name], declared["type"], f"{path}.{name}", named)
        elif "default" not in declared and not _nullable(_resolve(declared["type"], named)):
            found.append((f"{path}.{name}", "required, and missing"))
    known = {declared["name"] for declared in schema["fields"]}
    return found + [(f"{path}.{key}", "not in the schema") for key in value if key not in known]


def _array(value: Any, schema: Any, path: str, named: dict[str, Any]) -> Failures:
    if not isinstance(value, list):
        return [(path, "expected an array")]
    items = schema["items"]
    return [
        f for i, item in enumerate(value) for f in _failures(item, items, f"{path}[{i}]", named)
    ]


def _map(value: Any, schema: Any, path: str, named: dict[str, Any]) -> Failures:
    if not isinstance(value, Mapping):
        return [(path, "expected an object (map)")]
    values = schema["values"]
    return [
        f
        for key, item in value.items()
        for f in _failures(item, values, f"{path}[{json.dumps(key)}]", named)
    ]


def _union(value: Any, schema: Any, path: str, named: dict[str, Any]) -> Failures:
    branches = [_resolve(s, named) for s in schema]
    closest: Failures | None = None
    for branch in branches:
        found = _failures(value, branch, path, named)
        if not found:
            return []
        if closest is None and isinstance(value, Mapping) and _kind(branch) in ("record", "map"):
            closest = found  # an object: explained against the object branch
    return closest or [(path, "expected " + " or ".join(_describe(b) for b in branches))]


_WALKS: Final = {"record": _record, "array": _array, "map": _map, "union": _union}


_CONTAINERS: Final = frozenset({"record", "array", "map", "union"})


def _undeclared(value: Any, schema: Any, path: str, named: dict[str, Any]) -> Failures:
    """The object members no record declares, in a value fastavro found to fit."""
    schema = _resolve(schema, named)
    kind = _kind(schema)
    if kind not in _CONTAINERS:
        return []
    if kind == "record" and isinstance(value, Mapping):
        fields = {declared["name"]: declared["type"] for declared in schema["fields"]}
        found = [(f"{path}.{key}", "not in the schema") for key in value if key not in fields]
        for name, declared in fields.items():
            if name in value and _kind(_resolve(declared, named)) in _CONTAINERS:
                found += _undeclared(value[name], declared, f"{path}.{name}", named)
        return found
    if kind == "union" and isinstance(value, Mapping | list):
        # The branch it fits with no member left over, else the first container it fits.
        fitting = [b for b in schema if _kind(_resolve(b, named)) in _CONTAINERS]
        if any(not _failures(value, branch, path, named) for branch in fitting):
            return []
        return _undeclared(value, fitting[0], path, named) if fitting else []
    return [
        failure
        for item, item_schema, item_path in _children(value, schema, kind, path)
        for failure in _undeclared(item, item_schema, item_path, named)
    ]


def _children(value: Any, schema: Any, kind: str, path: str) -> list[tuple[Any, Any, str]]:
    """An array's items or a map's values: (value, schema, path) each."""
    if kind == "array" and isinstance(value, list):
        return [(item, schema["items"], f"{path}[{i}]") for i, item in enumerate(value)]
    if kind == "map" and isinstance(value, Mapping):
        values = schema["values"]
        return [(item, values, f"{path}[{json.dumps(key)}]") for key, item in value.items()]
    return []
