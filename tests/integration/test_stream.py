"""Following a topic live: Server-Sent Events and NDJSON."""

import time
from collections.abc import Iterator

import httpx
import orjson

from tests.integration.conftest import PulsarCluster, start_gateway, stop_gateway


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Parse an SSE line stream into events ({"id", "data", "event"}); comments too."""
    event: dict[str, str] = {}
    for line in lines:
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


def publish(http: httpx.Client, topic: str, values: list[int]) -> None:
    response = http.post(
        f"/v1/topics/{topic}/messages", json={"messages": [{"value": v} for v in values]}
    )
    assert response.status_code == 200, response.text


def read_events(http: httpx.Client, topic: str, count: int, **headers: str) -> list[dict[str, str]]:
    events: list[dict[str, str]] = []
    with http.stream(
        "GET",
        f"/v1/topics/{topic}/stream",
        params={"position": "earliest"},
        headers=headers,
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in sse_events(response.iter_lines()):
            if "data" in event:
                events.append(event)
            if len(events) == count:
                break
    return events


def test_reconnecting_with_last_event_id_resumes_without_gap_or_repeat(
    http: httpx.Client, topic: str
) -> None:
    publish(http, topic, list(range(20)))
    first = read_events(http, topic, 7)
    assert [orjson.loads(e["data"])["value"] for e in first] == list(range(7))

    rest = read_events(http, topic, 13, **{"Last-Event-ID": first[-1]["id"]})
    assert [orjson.loads(e["data"])["value"] for e in rest] == list(range(7, 20))


def test_stream_delivers_messages_published_while_connected(http: httpx.Client, topic: str) -> None:
    publish(http, topic, [0])
    with http.stream(
        "GET", f"/v1/topics/{topic}/stream", params={"position": "earliest"}, timeout=30
    ) as response:
        values = []
        for event in sse_events(response.iter_lines()):
            if "data" not in event:
                continue
            values.append(orjson.loads(event["data"])["value"])
            if values == [0]:
                with httpx.Client(base_url=str(http.base_url), headers=http.headers) as other:
                    publish(other, topic, [1, 2])
            if len(values) == 3:
                break
    assert values == [0, 1, 2]


def test_ndjson_streams_one_message_per_line_with_its_cursor(
    http: httpx.Client, topic: str
) -> None:
    publish(http, topic, [10, 11])
    with http.stream(
        "GET",
        f"/v1/topics/{topic}/stream",
        params={"position": "earliest"},
        headers={"Accept": "application/x-ndjson"},
        timeout=30,
    ) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = []
        for line in response.iter_lines():
            if line:
                lines.append(orjson.loads(line))
            if len(lines) == 2:
                break
    assert [m["value"] for m in lines] == [10, 11]
    resumed = http.get(
        f"/v1/topics/{topic}/messages", params={"position": lines[0]["cursor"]}
    ).json()
    assert [m["value"] for m in resumed["messages"]] == [11]


def test_idle_stream_gets_heartbeats(pulsar_cluster: PulsarCluster, topic: str) -> None:
    gateway = start_gateway(pulsar_cluster, stream_heartbeat_s="0.2")
    try:
        with (
            gateway.client() as client,
            client.stream("GET", f"/v1/topics/{topic}/stream") as r,
        ):
            assert r.status_code == 200
            comments = []
            for event in sse_events(r.iter_lines()):
                comments.append(event.get("comment"))
                if comments.count("heartbeat") == 2:
                    break
    finally:
        stop_gateway(gateway)
    assert comments.count("heartbeat") == 2


def test_a_client_that_disconnects_leaves_no_reader_behind(
    http: httpx.Client, admin: httpx.Client, topic: str
) -> None:
    publish(http, topic, [1])
    read_events(http, topic, 1)
    deadline = time.monotonic() + 15
    while admin.get(f"/persistent/{topic}/stats").json()["subscriptions"]:
        assert time.monotonic() < deadline, "the stream's reader is still open"
        time.sleep(0.2)


def test_stream_of_a_missing_namespace_is_a_404_not_an_event(http: httpx.Client) -> None:
    response = http.get("/v1/topics/public/no-such-ns/t/stream")
    assert response.status_code == 404
    assert response.json()["code"] == "namespace_not_found"
