"""The first vertical slice: what the gateway publishes, Pulsar has; and the reverse."""

import base64
import socket
import time

import httpx
import orjson
import pulsar

from tests.integration.conftest import Gateway


def test_gateway_publish_is_read_back_by_the_native_client(
    http: httpx.Client, native: pulsar.Client, topic: str
) -> None:
    reader = native.create_reader(f"persistent://{topic}", pulsar.MessageId.earliest)
    response = http.post(
        f"/v1/topics/{topic}/messages",
        json={
            "messages": [
                {
                    "value": {"order_id": 42, "total": 9.5},
                    "key": "order-42",
                    "properties": {"source": "checkout"},
                    "event_time": "2026-11-21T10:00:00Z",
                }
            ]
        },
    )
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    assert result["index"] == 0 and result["message_id"]

    message = reader.read_next(timeout_millis=10_000)
    assert orjson.loads(message.data()) == {"order_id": 42, "total": 9.5}
    assert message.partition_key() == "order-42"
    assert message.properties() == {"source": "checkout"}
    assert message.event_timestamp() == 1795255200000
    reader.close()


def test_native_publish_is_returned_by_a_gateway_read_from_earliest(
    http: httpx.Client, native: pulsar.Client, topic: str
) -> None:
    producer = native.create_producer(f"persistent://{topic}")
    producer.send(orjson.dumps({"hello": "world"}), partition_key="k-1", properties={"a": "b"})
    producer.send(b"\x00\x01 not json", partition_key="k-2")
    producer.close()

    response = http.get(f"/v1/topics/{topic}/messages", params={"position": "earliest"})
    assert response.status_code == 200, response.text
    first, second = response.json()["messages"]
    assert first["key"] == "k-1"
    assert first["value"] == {"hello": "world"}
    assert first["properties"] == {"a": "b"}
    assert first["publish_time"] > 0
    assert second["key"] == "k-2"
    assert base64.b64decode(second["data"]) == b"\x00\x01 not json"
    assert "value" not in second


def test_paging_with_next_continues_without_gaps_or_repeats(http: httpx.Client, topic: str) -> None:
    values = list(range(25))
    response = http.post(
        f"/v1/topics/{topic}/messages", json={"messages": [{"value": v} for v in values]}
    )
    assert response.status_code == 200, response.text

    seen: list[int] = []
    position = "earliest"
    for _ in range(10):
        page = http.get(
            f"/v1/topics/{topic}/messages", params={"position": position, "limit": 10}
        ).json()
        seen += [m["value"] for m in page["messages"]]
        position = page["next"]
        if not page["messages"]:
            break
    assert seen == values


def test_reads_create_no_durable_subscription(
    http: httpx.Client, admin: httpx.Client, topic: str
) -> None:
    http.post(f"/v1/topics/{topic}/messages", json={"messages": [{"value": 1}]})
    for position in ("earliest", "latest"):
        page = http.get(f"/v1/topics/{topic}/messages", params={"position": position})
        assert page.status_code == 200
    stats = admin.get(f"/persistent/{topic}/stats")
    assert stats.status_code == 200, stats.text
    # Only readers, kept a little while for the next page: nothing holds a backlog.
    subscriptions = stats.json()["subscriptions"].values()
    assert not [s for s in subscriptions if s["isDurable"]]


def test_readyz_and_metrics_report_the_live_broker(http: httpx.Client, topic: str) -> None:
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["clusters"].values()) == {"ready"}
    http.post(f"/v1/topics/{topic}/messages", json={"messages": [{"value": 1}]})
    metrics = http.get("/metrics").text
    assert 'broker_gateway_messages_published_total{outcome="persisted",tenant="public"}' in metrics
    assert 'route="/v1/topics/{tenant}/{namespace}/{topic}/messages"' in metrics


def test_an_idle_connection_is_kept_longer_than_a_load_balancer_keeps_it(
    gateway: Gateway,
) -> None:
    """A load balancer or client reuses an idle connection for up to its own idle timeout
    (often 60 s). Had the gateway closed it first (uvicorn's default: 5 s), a request sent
    at that moment would get no answer at all. The connection still answers after 6 s."""
    port = int(gateway.url.rsplit(":", 1)[1])
    request = b"GET /livez HTTP/1.1\r\nHost: gateway\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        assert connection.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(6)
        connection.sendall(request)
        answer = connection.recv(4096)  # b"" had the gateway closed it
        assert answer.startswith(b"HTTP/1.1 200"), answer
