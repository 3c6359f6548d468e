"""Replay over HTTP: positions, cursors, partitions, long polls."""

import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime

import httpx
import pytest

from tests.integration.conftest import PulsarCluster, start_gateway, stop_gateway

MESSAGES = 10_000
KEYS = 50


def publish_keyed(http: httpx.Client, topic: str, total: int, batch: int = 1000) -> None:
    for start in range(0, total, batch):
        response = http.post(
            f"/v1/topics/{topic}/messages",
            json={
                "messages": [
                    {"value": {"n": n}, "key": f"key-{n % KEYS}"}
                    for n in range(start, min(start + batch, total))
                ]
            },
        )
        assert response.status_code == 200, response.text


def page_through(http: httpx.Client, topic: str, limit: int) -> list[dict[str, object]]:
    messages: list[dict[str, object]] = []
    position = "earliest"
    while True:
        page = http.get(
            f"/v1/topics/{topic}/messages", params={"position": position, "limit": limit}
        )
        assert page.status_code == 200, page.text
        body = page.json()
        if not body["messages"]:
            return messages
        messages += body["messages"]
        position = body["next"]


def assert_exactly_once_in_key_order(messages: list[dict[str, object]]) -> None:
    numbers = [m["value"]["n"] for m in messages]  # type: ignore[index]
    assert sorted(numbers) == list(range(MESSAGES)), "a message is missing or repeated"
    per_key: dict[object, list[dict[str, object]]] = defaultdict(list)
    for message in messages:
        per_key[message["key"]].append(message)
    assert len(per_key) == KEYS
    for key, ordered in per_key.items():
        sequence = [m["value"]["n"] for m in ordered]  # type: ignore[index]
        wrong = next((i for i in range(1, len(sequence)) if sequence[i] < sequence[i - 1]), None)
        # Where it went wrong, as stored: message ids (ledger:entry:partition:batch index)
        # and publish times, and the page order around it.
        context = [
            (m["value"]["n"], m["message_id"], m["publish_time"])  # type: ignore[index]
            for m in ordered[max(0, (wrong or 0) - 3) : (wrong or 0) + 3]
        ]
        assert wrong is None, f"{key} out of order at {wrong}: {context}"


def test_ten_thousand_messages_page_back_exactly_once_in_key_order(
    http: httpx.Client, topic: str
) -> None:
    publish_keyed(http, topic, MESSAGES)
    assert_exactly_once_in_key_order(page_through(http, topic, limit=700))


def test_partitioned_topic_pages_back_exactly_once_in_key_order(
    http: httpx.Client, admin: httpx.Client, topic: str
) -> None:
    admin.put(f"/persistent/{topic}/partitions", json=4).raise_for_status()
    publish_keyed(http, topic, MESSAGES)
    messages = page_through(http, topic, limit=900)
    assert_exactly_once_in_key_order(messages)
    partitions = {str(m["message_id"]).split(":")[2] for m in messages}
    assert partitions == {"0", "1", "2", "3"}


def test_a_key_always_lands_in_the_same_partition(
    http: httpx.Client, admin: httpx.Client, topic: str
) -> None:
    admin.put(f"/persistent/{topic}/partitions", json=3).raise_for_status()
    publish_keyed(http, topic, 600, batch=100)
    partition_of: dict[object, set[str]] = defaultdict(set)
    for message in page_through(http, topic, limit=1000):
        partition_of[message["key"]].add(str(message["message_id"]).split(":")[2])
    assert all(len(p) == 1 for p in partition_of.values())


@pytest.mark.parametrize("form", ["epoch_ms", "rfc3339"])
def test_time_position_returns_the_first_message_at_or_after_that_time(
    http: httpx.Client, topic: str, form: str
) -> None:
    for value in ("before-1", "before-2"):
        http.post(f"/v1/topics/{topic}/messages", json={"messages": [{"value": value}]})
    time.sleep(0.3)
    for value in ("after-1", "after-2"):
        http.post(f"/v1/topics/{topic}/messages", json={"messages": [{"value": value}]})
    everything = http.get(f"/v1/topics/{topic}/messages").json()["messages"]
    boundary = everything[2]["publish_time"]
    assert everything[1]["publish_time"] < boundary

    when = (
        str(boundary)
        if form == "epoch_ms"
        else datetime.fromtimestamp(boundary / 1000, UTC).isoformat(timespec="milliseconds")
    )
    page = http.get(f"/v1/topics/{topic}/messages", params={"position": f"time:{when}"}).json()
    assert [m["value"] for m in page["messages"]] == ["after-1", "after-2"]


def test_latest_returns_nothing_and_its_cursor_sees_what_comes_next(
    http: httpx.Client, topic: str
) -> None:
    http.post(f"/v1/topics/{topic}/messages", json={"messages": [{"value": "old"}]})
    page = http.get(f"/v1/topics/{topic}/messages", params={"position": "latest"}).json()
    assert page["messages"] == []
    http.post(f"/v1/topics/{topic}/messages", json={"messages": [{"value": "new"}]})
    after = http.get(f"/v1/topics/{topic}/messages", params={"position": page["next"]}).json()
    assert [m["value"] for m in after["messages"]] == ["new"]


def test_an_empty_page_keeps_its_cursor_so_nothing_is_skipped(
    http: httpx.Client, topic: str
) -> None:
    http.post(f"/v1/topics/{topic}/messages", json={"messages": [{"value": 1}]})
    first = http.get(f"/v1/topics/{topic}/messages").json()
    empty = http.get(f"/v1/topics/{topic}/messages", params={"position": first["next"]}).json()
    assert empty["messages"] == [] and empty["next"] == first["next"]
    http.post(f"/v1/topics/{topic}/messages", json={"messages": [{"value": 2}]})
    later = http.get(f"/v1/topics/{topic}/messages", params={"position": empty["next"]}).json()
    assert [m["value"] for m in later["messages"]] == [2]


def test_long_poll_returns_a_message_published_while_it_waits(
    http: httpx.Client, topic: str
) -> None:
    http.post(f"/v1/topics/{topic}/messages", json={"messages": [{"value": "seed"}]})
    cursor = http.get(f"/v1/topics/{topic}/messages").json()["next"]

    def publish_soon() -> None:
        time.sleep(0.5)
        http.post(f"/v1/topics/{topic}/messages", json={"messages": [{"value": "late"}]})

    publisher = threading.Thread(target=publish_soon)
    publisher.start()
    page = http.get(
        f"/v1/topics/{topic}/messages", params={"position": cursor, "wait_ms": 20_000}
    ).json()
    publisher.join()
    assert [m["value"] for m in page["messages"]] == ["late"]


def test_encoding_base64_returns_json_payloads_as_data(http: httpx.Client, topic: str) -> None:
    http.post(f"/v1/topics/{topic}/messages", json={"messages": [{"value": {"a": 1}}]})
    [message] = http.get(f"/v1/topics/{topic}/messages", params={"encoding": "base64"}).json()[
        "messages"
    ]
    assert message["data"] == "eyJhIjoxfQ==" and "value" not in message


def test_limit_above_the_maximum_is_invalid(http: httpx.Client, topic: str) -> None:
    response = http.get(f"/v1/topics/{topic}/messages", params={"limit": 1_000_000})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


def test_a_cursor_from_one_replica_continues_on_another(
    http: httpx.Client, pulsar_cluster: PulsarCluster, topic: str
) -> None:
    publish_keyed(http, topic, 30, batch=30)
    first = http.get(f"/v1/topics/{topic}/messages", params={"limit": 10}).json()
    other = start_gateway(pulsar_cluster)
    try:
        with other.client() as client:
            rest = client.get(
                f"/v1/topics/{topic}/messages", params={"position": first["next"]}
            ).json()
    finally:
        stop_gateway(other)
    numbers = [m["value"]["n"] for m in first["messages"] + rest["messages"]]
    assert numbers == list(range(30))


def readers_on(admin: httpx.Client, topic: str) -> set[str]:
    """The names of the non-durable subscriptions (readers) open on `topic`."""
    stats = admin.get(f"/persistent/{topic}/stats")
    stats.raise_for_status()
    return {
        name
        for name, subscription in stats.json()["subscriptions"].items()
        if not subscription["isDurable"]
    }


def numbers_of(page: httpx.Response) -> list[int]:
    assert page.status_code == 200, page.text
    return [m["value"]["n"] for m in page.json()["messages"]]


def test_the_next_page_is_read_by_the_reader_of_the_page_before(
    http: httpx.Client, admin: httpx.Client, topic: str
) -> None:
    publish_keyed(http, topic, 30, batch=30)
    url = f"/v1/topics/{topic}/messages"
    first = http.get(url, params={"limit": 10})
    [reader] = readers_on(admin, topic)
    second = http.get(url, params={"position": first.json()["next"], "limit": 10})
    assert numbers_of(second) == list(range(10, 20))
    assert readers_on(admin, topic) == {reader}, "the second page opened a reader of its own"
    http.get(url, params={"limit": 10})  # from the start again: a reader of its own
    assert len(readers_on(admin, topic)) == 2


def test_a_page_read_again_from_its_cursor_returns_the_same_messages(
    http: httpx.Client, topic: str
) -> None:
    publish_keyed(http, topic, 30, batch=30)
    url = f"/v1/topics/{topic}/messages"
    cursor = http.get(url, params={"limit": 10}).json()["next"]
    again = [http.get(url, params={"position": cursor, "limit": 10}) for _ in range(2)]
    assert numbers_of(again[0]) == numbers_of(again[1]) == list(range(10, 20))
    assert again[0].json()["next"] == again[1].json()["next"]
    rest = http.get(url, params={"position": again[0].json()["next"]})
    assert numbers_of(rest) == list(range(20, 30))


def test_kept_readers_are_bounded_and_closed_when_idle(
    pulsar_cluster: PulsarCluster, admin: httpx.Client
) -> None:
    gateway = start_gateway(pulsar_cluster, read_readers_kept="1", read_reader_idle_s="1")
    topics = [f"public/default/t-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    try:
        with gateway.client() as http:
            for topic in topics:
                publish_keyed(http, topic, 5, batch=5)
            http.get(f"/v1/topics/{topics[0]}/messages", params={"limit": 2})
            assert len(readers_on(admin, topics[0])) == 1
            http.get(f"/v1/topics/{topics[1]}/messages", params={"limit": 2})
            assert readers_on(admin, topics[0]) == set(), "more readers kept than allowed"
            assert len(readers_on(admin, topics[1])) == 1
            deadline = time.monotonic() + 10
            while readers_on(admin, topics[1]) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert readers_on(admin, topics[1]) == set(), "an idle reader was kept"
    finally:
        stop_gateway(gateway)
