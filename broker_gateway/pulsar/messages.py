"""Messages in and out of Pulsar, as plain values the HTTP layer can build and render."""

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson
import pulsar

from broker_gateway.pulsar.codecs import Position

if TYPE_CHECKING:
    from broker_gateway.pulsar.contracts import Contract

# An OutgoingMessage's `value` when its payload was given as bytes (base64 `data`, or a raw
# body), not as a JSON value.
RAW: Final[Any] = object()


@dataclass(slots=True)  # not frozen: a frozen dataclass is several times slower to build
class OutgoingMessage:
    payload: bytes
    key: str | None = None
    ordering_key: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    event_time_ms: int | None = None
    deliver_at_ms: int | None = None
    deliver_after_ms: int | None = None
    sequence_id: int | None = None
    value: Any = RAW  # the JSON value the payload was made from, checked by a contract


def position_of(message_id: Any) -> Position:
    """The Position of a pulsar.MessageId or _pulsar.MessageId."""
    return Position(
        message_id.ledger_id(),
        message_id.entry_id(),
        message_id.batch_index(),
        message_id.partition(),
    )


def to_message_id(position: Position) -> pulsar.MessageId:
    return pulsar.MessageId(
        position.partition, position.ledger, position.entry, position.batch_index
    )


# How a JSON text can begin: anything else is not JSON, and is told so without the cost
# of a failed parse (an exception per binary message).
_JSON_FIRST_BYTES: Final = frozenset(bytes([b]) for b in b' \t\r\n{["-0123456789tfn')


def render(
    message: Any,
    position: Position | None = None,
    *,
    base64_only: bool = False,
    decoders: "Mapping[int, Contract] | None" = None,
) -> dict[str, Any]:
    """A received _pulsar.Message as the API's Message object; `position` is its own, when
    the caller has it already (reading it from the message costs five calls into C++).

    The payload goes out as `value` when it is JSON (embedded as is, not re-encoded) or
    decodes under its schema version's contract in `decoders` (Avro, primitives), else as
    base64 `data`.
    """
    payload: bytes = message.data()
    event_time = message.event_timestamp()
    if position is None:
        position = position_of(message.message_id())
    rendered: dict[str, Any] = {
        "message_id": str(position),
        "key": message.partition_key() or None,
        "ordering_key": message.ordering_key() or None,
        "properties": message.properties(),
        "publish_time": message.publish_timestamp(),
        "event_time": event_time or None,
    }
    if decoders and not base64_only:
        contract = decoders.get(message.int_schema_version())
        text = None if contract is None else contract.render(payload)
        if text is not None:
            rendered["value"] = orjson.Fragment(text)
            return rendered
    if not base64_only and payload[:1] in _JSON_FIRST_BYTES:
        try:
            orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
        else:
            rendered["value"] = orjson.Fragment(payload)
            return rendered
    rendered["data"] = base64.b64encode(payload).decode()
    return rendered
