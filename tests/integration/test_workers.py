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
    pull_all,
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

        # A short deadline: a message whose ack went astray would come back.
        pulled = pull_all(client, queue, 40, ack_deadline_ms=5000)

        for receipt in pulled.values():  # one connection each: acks land on either worker
            acked = client.post(f"{queue}/ack", json={"receipts": [receipt]})
            assert acked.status_code == 200, acked.text
            assert acked.json() == {"succeeded": 1, "failed": []}

        time.sleep(5.5)  # past every deadline
        for _ in range(4):
            again = client.post(f"{queue}/pull", json={"max_messages": 40, "wait_ms": 500})
            assert again.status_code == 200, again.text
            assert again.json()["messages"] == []
