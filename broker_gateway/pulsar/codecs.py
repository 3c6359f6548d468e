"""Pure codecs: topic names, message positions and the opaque cursors built from them.

No broker is needed here, so all of it is unit-tested on its own.
"""

import base64
import binascii
import functools
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Final, NamedTuple

from broker_gateway.errors import InvalidRequest

# Pulsar's own rule for tenant, namespace and topic names; `/` never passes, so a name can
# not reach into another tenant.
_NAME: Final = re.compile(r"^[A-Za-z0-9_.=:-]+$")
_MAX_NAME: Final = 255


@dataclass(frozen=True, slots=True)
class TopicName:
    tenant: str
    namespace: str
    topic: str

    @classmethod
    def parse(cls, tenant: str, namespace: str, topic: str) -> "TopicName":
        """Raises: InvalidRequest when a part breaks Pulsar's naming rules."""
        for kind, value in (("tenant", tenant), ("namespace", namespace), ("topic", topic)):
            if not _NAME.fullmatch(value) or len(value) > _MAX_NAME or value in (".", ".."):
                raise InvalidRequest(
                    f"invalid {kind} name {value!r}: use 1-{_MAX_NAME} of [A-Za-z0-9_.=:-]"
                )
        return cls(tenant, namespace, topic)

    @property
    def persistent(self) -> str:
        return f"persistent://{self.tenant}/{self.namespace}/{self.topic}"

    def partition(self, index: int) -> "TopicName":
        """One partition of a partitioned topic; NON_PARTITIONED is the topic itself."""
        if index == NON_PARTITIONED:
            return self
        return TopicName(self.tenant, self.namespace, f"{self.topic}-partition-{index}")

    @property
    def path(self) -> str:
        """The `{tenant}/{namespace}/{topic}` form used in URLs and the admin API."""
        return f"{self.tenant}/{self.namespace}/{self.topic}"

    def __str__(self) -> str:
        return self.path


class Position(NamedTuple):
    """Where one message sits in a topic (or one partition of it).

    A tuple, not a frozen dataclass: one is built per message published or delivered,
    and a tuple is built several times faster.
    """

    ledger: int
    entry: int
    batch_index: int = -1
    partition: int = -1

    def __str__(self) -> str:
        return f"{self.ledger}:{self.entry}:{self.partition}:{self.batch_index}"


# Before the first message of any topic: reading after it reads everything.
EARLIEST: Final = Position(-1, -1)

# The partition index of a non-partitioned topic, in positions and cursors.
NON_PARTITIONED: Final = -1

# A cursor is the position of the last message a client has seen, per partition (-1 for a
# non-partitioned topic), for one topic, in one cluster. Layout: version byte, a tag of the
# topic's name, the cluster's name (length byte, then UTF-8), the publish time of the last
# message handed out (epoch ms; else when reading began), then per partition the packed
# position. The tag makes a cursor useless on another topic (and so in another tenant):
# positions are only meaningful where they were read, and in that cluster; another
# cluster resumes from the publish time.
_CURSOR_VERSION: Final = 3
_OLD_CURSOR_VERSION: Final = 2  # without cluster and time
_TAG_BYTES: Final = 6
_ENTRY: Final = struct.Struct(">iqqi")
_TIME: Final = struct.Struct(">q")


@functools.lru_cache(maxsize=4096)  # a stream tags every event's cursor
def _topic_tag(topic: TopicName) -> bytes:
    return hashlib.blake2b(topic.path.encode(), digest_size=_TAG_BYTES).digest()


class Cursor:
    """A topic's cursor as it moves, one message at a time.

    Each partition's packed position is kept, so moving past a message and writing the
    cursor costs one pack and one base64: a stream writes a cursor per event.
    """

    __slots__ = ("_head", "_packed", "time_ms")

    def __init__(
        self, topic: TopicName, positions: dict[int, Position], cluster: str = "", time_ms: int = 0
    ) -> None:
        name = cluster.encode()
        self._head = bytes([_CURSOR_VERSION]) + _topic_tag(topic) + bytes([len(name)]) + name
        self._packed = {p: _pack(p, positions[p]) for p in sorted(positions)}
        self.time_ms = time_ms

    def move(self, partition: int, position: Position, time_ms: int) -> None:
        """The partition's last message handed out is now at `position`, published at
        `time_ms`."""
        self._packed[partition] = _pack(partition, position)
        self.time_ms = time_ms

    def __str__(self) -> str:
        raw = self._head + _TIME.pack(self.time_ms) + b"".join(self._packed.values())
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _pack(partition: int, p: Position) -> bytes:
    return _ENTRY.pack(partition, p.ledger, p.entry, p.batch_index)


def encode_cursor(
    positions: dict[int, Position], topic: TopicName, cluster: str = "", time_ms: int = 0
) -> str:
    return str(Cursor(topic, positions, cluster, time_ms))


def decode_cursor(cursor: str, topic: TopicName) -> dict[int, Position]:
    """Raises: InvalidRequest when the cursor was not made by encode_cursor for `topic`."""
    return read_cursor(cursor, topic).after or {}


def read_cursor(cursor: str, topic: TopicName) -> "Start":
    """The start after `cursor`: its positions, cluster and time.

    Raises: InvalidRequest when the cursor was not made by encode_cursor for `topic`.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("invalid cursor: not base64url") from exc
    header = 1 + _TAG_BYTES
    if len(raw) <= header or raw[0] not in (_CURSOR_VERSION, _OLD_CURSOR_VERSION):
        raise InvalidRequest("invalid cursor")
    if not hmac.compare_digest(raw[1:header], _topic_tag(topic)):
        raise InvalidRequest(f"invalid cursor: it was made for another topic than {topic}")
    cluster, time_ms = None, None
    if raw[0] == _CURSOR_VERSION:
        end = header + 1 + raw[header]
        if len(raw) < end + _TIME.size:
            raise InvalidRequest("invalid cursor")
        try:
            cluster = raw[header + 1 : end].decode() or None
        except UnicodeDecodeError as exc:
            raise InvalidRequest("invalid cursor") from exc
        (time_ms,) = _TIME.unpack_from(raw, end)
        header = end + _TIME.size
    body = raw[header:]
    if not body or len(body) % _ENTRY.size:
        raise InvalidRequest("invalid cursor")
    positions: dict[int, Position] = {}
    for offset in range(0, len(body), _ENTRY.size):
        partition, ledger, entry, batch_index = _ENTRY.unpack_from(body, offset)
        positions[partition] = Position(ledger, entry, batch_index, partition)
    return Start("after", time_ms=time_ms, after=positions, cluster=cluster)


@dataclass(frozen=True, slots=True)
class Start:
    """Where a read begins: `earliest`, `latest`, a publish time, or after a cursor."""

    kind: str  # "earliest" | "latest" | "time" | "after"
    time_ms: int | None = None  # for "after": the publish time of the cursor's last message
    after: dict[int, Position] | None = None
    cluster: str | None = None  # for "after": the cluster the cursor's positions are in
    # For "time": messages published before this are passed over (read, not handed out).
    skip_before_ms: int | None = None


def parse_time(text: str) -> int:
    """Epoch milliseconds from an RFC 3339 string or integer epoch milliseconds.

    Raises: InvalidRequest for anything else, including a time without a zone.
    """
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidRequest(f"invalid time {text!r}: use RFC 3339 or epoch ms") from exc
    if parsed.tzinfo is None:
        raise InvalidRequest(f"invalid time {text!r}: RFC 3339 needs a zone (Z or +hh:mm)")
    return int(parsed.timestamp() * 1000)


def parse_start(position: str, topic: TopicName) -> Start:
    """Raises: InvalidRequest when `position` is none of the four forms, or a cursor of
    another topic."""
    if position in ("earliest", "latest"):
        return Start(position)
    if position.startswith("time:"):
        return Start("time", time_ms=parse_time(position.removeprefix("time:")))
    return read_cursor(position, topic)
