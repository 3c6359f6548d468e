import base64
import hashlib
import struct

import pytest

from broker_gateway.errors import InvalidRequest
from broker_gateway.pulsar.codecs import (
    EARLIEST,
    Cursor,
    Position,
    TopicName,
    decode_cursor,
    encode_cursor,
    parse_start,
    parse_time,
)

TOPIC = TopicName("acme", "orders", "created")


def test_cursor_round_trips_every_partition_position() -> None:
    positions = {
        -1: Position(12, 7, 3, -1),
        0: Position(2**40, 2**33, -1, 0),
        5: EARLIEST,
    }
    assert decode_cursor(encode_cursor(positions, TOPIC), TOPIC) == {
        -1: Position(12, 7, 3, -1),
        0: Position(2**40, 2**33, -1, 0),
        5: Position(-1, -1, -1, 5),
    }


def test_a_moving_cursor_reads_as_the_cursor_of_its_positions() -> None:
    cursor = Cursor(TOPIC, {2: EARLIEST, 0: EARLIEST, 1: Position(5, 6, -1, 1)})
    cursor.move(2, Position(9, 1, 4, 2), 1_795_000_000_000)
    cursor.move(0, Position(7, 3, -1, 0), 1_795_000_000_001)
    assert decode_cursor(str(cursor), TOPIC) == {
        0: Position(7, 3, -1, 0),
        1: Position(5, 6, -1, 1),
        2: Position(9, 1, 4, 2),
    }


def test_a_cursor_names_its_cluster_and_the_publish_time_it_reached() -> None:
    cursor = Cursor(TOPIC, {-1: EARLIEST}, "east", 1_795_000_000_000)
    cursor.move(-1, Position(4, 2), 1_795_000_000_123)
    start = parse_start(str(cursor), TOPIC)
    assert (start.kind, start.cluster, start.time_ms) == ("after", "east", 1_795_000_000_123)
    assert start.after == {-1: Position(4, 2, -1, -1)}


def test_a_cursor_made_before_clusters_were_named_still_reads() -> None:
    version_2 = base64.urlsafe_b64encode(
        bytes([2])
        + hashlib.blake2b(TOPIC.path.encode(), digest_size=6).digest()
        + struct.pack(">iqqi", -1, 3, 4, -1)
    )
    start = parse_start(version_2.rstrip(b"=").decode(), TOPIC)
    assert (start.cluster, start.time_ms, start.after) == (None, None, {-1: Position(3, 4)})


def test_cursor_is_url_safe_text() -> None:
    cursor = encode_cursor({-1: Position(255, 255, 255)}, TOPIC)
    assert cursor.isascii()
    assert not set(cursor) & set("+/=")


@pytest.mark.parametrize("garbage", ["", "!!!", "AQ", "Ag", "AQID", "not-a-cursor"])
def test_forged_or_truncated_cursor_is_invalid_request(garbage: str) -> None:
    with pytest.raises(InvalidRequest):
        decode_cursor(garbage, TOPIC)


def test_a_cursor_is_useless_on_another_topic_or_tenant() -> None:
    cursor = encode_cursor({-1: Position(3, 4)}, TOPIC)
    for other in (
        TopicName("acme", "orders", "shipped"),
        TopicName("other", "orders", "created"),
    ):
        with pytest.raises(InvalidRequest, match="another topic"):
            decode_cursor(cursor, other)


@pytest.mark.parametrize(
    "parts",
    [
        ("a/b", "ns", "t"),
        ("tenant", "..", "t"),
        ("tenant", "ns", "persistent://x"),
        ("tenant", "ns", ""),
        ("tenant", "ns", "sp ace"),
        ("tenant", "ns", "x" * 256),
    ],
)
def test_topic_names_outside_pulsars_rules_are_rejected(parts: tuple[str, str, str]) -> None:
    with pytest.raises(InvalidRequest):
        TopicName.parse(*parts)


def test_topic_name_always_means_the_persistent_topic() -> None:
    name = TopicName.parse("acme", "orders.v1", "created=1:x_y-z")
    assert name.persistent == "persistent://acme/orders.v1/created=1:x_y-z"
    assert name.path == "acme/orders.v1/created=1:x_y-z"


def test_times_are_rfc3339_or_epoch_milliseconds() -> None:
    assert parse_time("1795000000000") == 1795000000000
    assert parse_time("2026-11-21T10:00:00Z") == 1795255200000
    assert parse_time("2026-11-21T11:00:00+01:00") == 1795255200000
    assert parse_time("2026-11-21T10:00:00.250Z") == 1795255200250


@pytest.mark.parametrize("text", ["2026-11-21T10:00:00", "yesterday", "-5", "1.5"])
def test_times_without_zone_or_malformed_are_rejected(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_time(text)


def test_start_positions_parse_into_their_four_forms() -> None:
    assert parse_start("earliest", TOPIC).kind == "earliest"
    assert parse_start("latest", TOPIC).kind == "latest"
    assert parse_start("time:1795000000000", TOPIC).time_ms == 1795000000000
    after = parse_start(encode_cursor({-1: Position(3, 4)}, TOPIC), TOPIC)
    assert after.kind == "after"
    assert after.after == {-1: Position(3, 4)}
