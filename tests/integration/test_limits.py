"""Each limit answers 413 or 429 (with Retry-After) as documented, never a 5xx."""

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import (
    Gateway,
    PulsarCluster,
    bearer,
    start_gateway,
    stop_gateway,
    token,
)


@pytest.fixture(scope="module")
def limited(pulsar_cluster: PulsarCluster) -> Iterator[Gateway]:
    gateway = start_gateway(
        pulsar_cluster,
        max_body_bytes="4096",
        max_messages_per_request="5",
        max_wait_ms="200",
        tenant_requests_per_s="0.2",
        tenant_request_burst="4",
        tenant_bytes_per_s="100",
        tenant_byte_burst="3000",
    )
    yield gateway
    stop_gateway(gateway)


def fresh_tenant(client: httpx.Client) -> str:
    """A tenant of its own, so each test starts with full buckets."""
    name = f"lim-{uuid.uuid4().hex[:8]}"
    v1 = "broker-gateway/v1"
    documents = [
        {
            "apiVersion": v1,
            "kind": "Tenant",
            "metadata": {"name": name},
            "spec": {"clusters": ["east"]},
        },
        {"apiVersion": v1, "kind": "Namespace", "metadata": {"name": f"{name}/ns"}},
    ]
    client.post("/v1/manifests/apply", json=documents).raise_for_status()
    return name


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    if status == 429:
        assert int(response.headers["retry-after"]) >= 1


def test_a_body_over_the_limit_is_413(limited: Gateway) -> None:
    with limited.client() as client:
        tenant = fresh_tenant(client)
        response = client.post(
            f"/v1/topics/{tenant}/ns/t/messages", json={"messages": [{"value": "x" * 5000}]}
        )
    assert_problem(response, 413, "payload_too_large")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_is_413_and_logs_no_traceback(
    pulsar_cluster: PulsarCluster, tmp_path: Path, framing: str
) -> None:
    log = tmp_path / "gateway.log"
    gateway = start_gateway(pulsar_cluster, log=log, max_body_bytes="2048")
    try:
        with gateway.client() as client:
            tenant = fresh_tenant(client)
            body = b'{"messages": [{"value": "' + b"x" * 3072 + b'"}]}'
            # An iterator has no length: httpx sends it with Transfer-Encoding: chunked.
            content = body if framing == "content-length" else iter([body[:1024], body[1024:]])
            response = client.post(
                f"/v1/topics/{tenant}/ns/t/messages",
                content=content,
                headers={"content-type": "application/json"},
            )
        sent = response.request.headers
        assert ("content-length" in sent) == (framing == "content-length"), sent
        assert_problem(response, 413, "payload_too_large")
    finally:
        stop_gateway(gateway)  # its log is complete once it has exited
    output = log.read_text()
    assert "Traceback" not in output, output
    assert "Exception in ASGI application" not in output, output


def test_too_many_messages_in_one_publish_is_413(limited: Gateway) -> None:
    with limited.client() as client:
        tenant = fresh_tenant(client)
        response = client.post(
            f"/v1/topics/{tenant}/ns/t/messages",
            json={"messages": [{"value": i} for i in range(6)]},
        )
    assert_problem(response, 413, "payload_too_large")


def test_wait_ms_over_the_cap_is_lowered_not_refused(limited: Gateway) -> None:
    with limited.client() as client:
        tenant = fresh_tenant(client)
        response = client.get(
            f"/v1/topics/{tenant}/ns/t/messages", params={"wait_ms": 3_600_000}, timeout=10
        )
    assert response.status_code == 200
    assert response.json()["messages"] == []


def test_a_tenant_over_its_request_rate_gets_429_and_others_do_not(limited: Gateway) -> None:
    with limited.client() as client:
        busy, quiet = fresh_tenant(client), fresh_tenant(client)
        answers = [client.get(f"/v1/topics/{busy}/ns/t/messages") for _ in range(5)]
        assert [r.status_code for r in answers[:4]] == [200] * 4
        assert_problem(answers[4], 429, "rate_limited")
        assert client.get(f"/v1/topics/{quiet}/ns/t/messages").status_code == 200


def test_a_tenant_over_its_byte_rate_gets_429(limited: Gateway) -> None:
    with limited.client() as client:
        tenant = fresh_tenant(client)
        url = f"/v1/topics/{tenant}/ns/t/messages"
        payload = {"messages": [{"value": "y" * 1800}]}
        assert client.post(url, json=payload).status_code == 200
        assert_problem(client.post(url, json=payload), 429, "rate_limited")


def test_a_principal_over_its_open_streams_gets_429_until_one_closes(
    pulsar_cluster: PulsarCluster,
) -> None:
    gateway = start_gateway(pulsar_cluster, max_streams_per_principal="2")
    try:
        check_stream_slots(gateway)
    finally:
        stop_gateway(gateway)


def check_stream_slots(gateway: Gateway) -> None:
    with gateway.client() as client:
        tenant = fresh_tenant(client)
    headers = bearer(token(principal=f"streamer-{uuid.uuid4().hex[:6]}", tenants=[tenant]))
    url = f"{gateway.url}/v1/topics/{tenant}/ns/t/stream"
    with httpx.Client(headers=headers, timeout=30) as client:
        first = client.stream("GET", url)
        second = client.stream("GET", url)
        with first as one, second as two:
            assert (one.status_code, two.status_code) == (200, 200)
            third = client.get(url.replace("/stream", "/messages"))
            assert third.status_code == 200  # reads are not streams
            with client.stream("GET", url) as refused:
                refused.read()
                assert_problem(refused, 429, "rate_limited")
        # Both closed: the slots are free again once the server notices the disconnects.
        deadline = time.monotonic() + 10
        while True:
            with client.stream("GET", url) as again:
                if again.status_code == 200:
                    break
                again.read()
                assert_problem(again, 429, "rate_limited")
            assert time.monotonic() < deadline, "the closed streams kept their slots"
            time.sleep(0.1)


def test_a_replica_at_its_in_flight_limit_answers_503_overloaded_but_stays_healthy(
    pulsar_cluster: PulsarCluster, topic: str
) -> None:
    gateway = start_gateway(pulsar_cluster, max_in_flight="2")
    read = f"/v1/topics/{topic}/messages"
    try:
        with gateway.client() as one, gateway.client() as two, gateway.client() as three:
            waiting = [
                one.build_request("GET", read, params={"wait_ms": 3000}),
                two.build_request("GET", read, params={"wait_ms": 3000}),
            ]
            with ThreadPoolExecutor(2) as pool:
                polls = [pool.submit(c.send, r) for c, r in zip((one, two), waiting, strict=True)]
                time.sleep(1)  # both long polls are in hand now
                refused = three.get(read)
                health = [three.get(p).status_code for p in ("/livez", "/readyz", "/metrics")]
                answered = [p.result().status_code for p in polls]
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "overloaded"
            assert refused.headers["retry-after"] == "1"
            assert health == [200, 200, 200]
            assert answered == [200, 200]
            assert three.get(read).status_code == 200  # the slots are free again
    finally:
        stop_gateway(gateway)
