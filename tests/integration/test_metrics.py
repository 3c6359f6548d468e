"""/metrics from the user's side: after publishing, reading, streaming and working a
queue, the exposition parses, and every metric the README's table names is there."""

import re
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import ROOT
from tests.integration.test_stream import sse_events


def _documented() -> set[str]:
    """The metric names in the README's Metrics table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Metrics, logs and traces", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(broker_gateway_[a-z_]+)`", section, re.MULTILINE))


def _samples(http: httpx.Client) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        # A family whose labels have no value yet is there, with no samples.
        found.setdefault(family.name + ("_total" if family.type == "counter" else ""), [])
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


def test_every_documented_metric_is_exposed_and_counts_what_it_says(
    http: httpx.Client, topic: str
) -> None:
    messages = f"/v1/topics/{topic}/messages"
    for _ in range(2):  # the second is answered from the first
        published = http.post(
            messages, json={"messages": [{"value": 1}]}, headers={"Idempotency-Key": "k-1"}
        )
        assert published.status_code == 200, published.text
    assert http.get(messages, params={"position": "earliest"}).json()["messages"]
    with http.stream(
        "GET", f"{messages[: -len('/messages')]}/stream", params={"position": "earliest"}
    ) as stream:
        assert next(e for e in sse_events(stream.iter_lines()) if "data" in e)
    queue = f"/v1/topics/{topic}/subscriptions/work-{uuid.uuid4().hex[:6]}"
    assert http.put(queue, json={"initial_position": "earliest"}).status_code == 201
    pulled = http.post(f"{queue}/pull", json={"max_messages": 1, "wait_ms": 5000}).json()
    [receipt] = [m["receipt"] for m in pulled["messages"]]
    assert (
        http.post(f"{queue}/nack", json={"receipts": [receipt], "delay_ms": 0}).status_code == 200
    )
    again = http.post(f"{queue}/pull", json={"max_messages": 1, "wait_ms": 5000}).json()
    [redelivered] = again["messages"]
    assert redelivered["delivery_attempt"] == 2
    assert http.post(f"{queue}/ack", json={"receipts": [redelivered["receipt"]]}).status_code == 200

    samples = _samples(http)
    documented = _documented()
    assert len(documented) >= 15
    families = {
        name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for name in samples
    }
    assert documented - families == set()
    tenant = topic.split("/")[0]
    assert (
        _value(
            samples, "broker_gateway_messages_published_total", tenant=tenant, outcome="persisted"
        )
        >= 1
    )
    assert _value(samples, "broker_gateway_published_bytes_total", tenant=tenant) > 0
    assert _value(samples, "broker_gateway_idempotency_replays_total", tenant=tenant) >= 1
    for via in ("read", "stream", "pull"):
        assert (
            _value(samples, "broker_gateway_messages_delivered_total", tenant=tenant, via=via) >= 1
        )
    assert _value(samples, "broker_gateway_queue_pulls_total", tenant=tenant) >= 2
    assert _value(samples, "broker_gateway_queue_redeliveries_total", tenant=tenant) >= 1
    for operation in ("ack", "nack"):
        assert (
            _value(
                samples,
                "broker_gateway_queue_settles_total",
                tenant=tenant,
                operation=operation,
                outcome="succeeded",
            )
            >= 1
        )
        assert (
            _value(
                samples,
                "broker_gateway_pulsar_operation_duration_seconds_count",
                operation=operation,
            )
            >= 1
        )
    assert (
        _value(samples, "broker_gateway_pulsar_operation_duration_seconds_count", operation="send")
        >= 1
    )
    assert _value(samples, "broker_gateway_open", resource="producers") >= 1
    assert _value(samples, "broker_gateway_open", resource="queue_consumers") >= 1
    assert _value(samples, "broker_gateway_cluster_up", cluster="east") == 1
    assert (
        _value(
            samples,
            "broker_gateway_http_requests_total",
            route="/v1/topics/{tenant}/{namespace}/{topic}/messages",
            method="POST",
            status="200",
        )
        >= 2
    )
