"""Following a topic live: Server-Sent Events and NDJSON."""

import signal
import time
from collections.abc import Iterator
from pathlib import Path

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


def test_a_stopping_gateway_ends_its_streams_and_exits_cleanly(
    pulsar_cluster: PulsarCluster, topic: str, tmp_path: Path
) -> None:
    """SIGTERM ends live streams at once (clients resume elsewhere with Last-Event-ID)
    instead of holding the shutdown until the drain timeout cancels them."""
    log = tmp_path / "gateway.log"
    gateway = start_gateway(pulsar_cluster, log=log)
    try:
        with gateway.client() as client:
            publish(client, topic, [1])
            with client.stream(
                "GET", f"/v1/topics/{topic}/stream", params={"position": "earliest"}
            ) as response:
                events = sse_events(response.iter_lines())
                assert orjson.loads(next(e for e in events if "data" in e)["data"])["value"] == 1
                gateway.process.send_signal(signal.SIGTERM)
                started = time.monotonic()
                for _ in events:  # until the gateway ends the stream
                    pass
                ended_in = time.monotonic() - started
        # uvicorn re-raises the signal once it has shut down: the process ends by SIGTERM,
        # as the signal's sender expects (as PID 1 of a container, it exits 0).
        assert gateway.process.wait(timeout=30) == -signal.SIGTERM
    finally:
        stop_gateway(gateway)
    assert ended_in < 10  # not held until GATEWAY_DRAIN_TIMEOUT_S (30 s)
    output = log.read_text()
    assert "Traceback" not in output
    assert "timeout graceful shutdown exceeded" not in output
