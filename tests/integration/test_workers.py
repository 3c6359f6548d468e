"""One gateway with several worker processes (GATEWAY_WORKERS): each worker is a replica,
and a client cannot tell which one answered."""

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    Gateway,
    PulsarCluster,
    bearer,
    start_gateway,
    stop_gateway,
)


@pytest.fixture(scope="module")
def two_workers(pulsar_cluster: PulsarCluster) -> Iterator[Gateway]:
    gateway = start_gateway(pulsar_cluster, workers="2")
    try:
        yield gateway
    finally:
        stop_gateway(gateway)


def fresh_connection(gateway: Gateway) -> httpx.Client:
    """A client that opens a new connection per request: the kernel hands each to any
    worker."""
    return httpx.Client(
        base_url=gateway.url,
        headers=bearer(),
        timeout=30,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def worker_processes(gateway: Gateway) -> list[int]:
    pid = gateway.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def published_total(client: httpx.Client) -> float:
    """Messages persisted on tenant public, as /metrics adds them up over the workers."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "broker_gateway_messages_published_total"
        and sample.labels == {"tenant": "public", "outcome": "persisted"}
    )


def test_serve_runs_the_number_of_workers_asked_for(two_workers: Gateway) -> None:
    assert len(worker_processes(two_workers)) == 2


def test_metrics_add_up_what_every_worker_did(two_workers: Gateway) -> None:
    topic = f"public/default/workers-metrics-{uuid.uuid4().hex[:8]}"
    with fresh_connection(two_workers) as client:
        before = published_total(client)
        for i in range(30):
            response = client.post(f"/v1/topics/{topic}/messages", content=f"m{i}".encode())
            assert response.status_code == 200, response.text
        # Whichever worker answers /metrics, it counts all 30.
        assert {published_total(client) - before for _ in range(6)} == {30.0}


def test_a_message_pulled_through_one_worker_is_acked_through_any(two_workers: Gateway) -> None:
    topic = f"public/default/workers-queue-{uuid.uuid4().hex[:8]}"
    queue = f"/v1/topics/{topic}/subscriptions/work"
    with fresh_connection(two_workers) as client:
        configured = client.put(queue, json={"initial_position": "earliest"})
        assert configured.status_code == 201, configured.text
        published = client.post(
            f"/v1/topics/{topic}/messages",
            json={"messages": [{"value": i} for i in range(40)]},
        )
        assert published.status_code == 200, published.text

        # As workers do: ack what each pull brought, one connection per ack, so acks land
        # on either worker. (Acking only once all 40 are out would wait on Pulsar: the 40
        # are one batch entry, and a worker's consumer hands back the part no pull took
        # there only when what it leased is settled.)
        acked_values: set[int] = set()
        deadline = time.monotonic() + 30
        while len(acked_values) < 40 and time.monotonic() < deadline:
            pulled = client.post(
                f"{queue}/pull",
                json={"max_messages": 10, "wait_ms": 500, "ack_deadline_ms": 60_000},
            )
            assert pulled.status_code == 200, pulled.text
            for message in pulled.json()["messages"]:
                acked = client.post(f"{queue}/ack", json={"receipts": [message["receipt"]]})
                assert acked.status_code == 200, acked.text
                assert acked.json() == {"succeeded": 1, "failed": []}
                acked_values.add(message["value"])
        assert acked_values == set(range(40))

        # Every ack reaches Pulsar, whichever worker took it (an ack for the other worker's
        # lease goes there through the control topic): the backlog empties. A deadline the
        # test could outlive under load would let a late ack look like a lost one.
        deadline = time.monotonic() + 20
        while (stats := client.get(queue).json())["backlog"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (stats["backlog"], stats["unacked"]) == (0, 0), stats
        again = client.post(f"{queue}/pull", json={"max_messages": 40, "wait_ms": 1000})
        assert again.status_code == 200, again.text
        assert [(m["value"], m["delivery_attempt"]) for m in again.json()["messages"]] == []
