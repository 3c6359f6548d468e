"""What browsers need, over plain HTTP: CORS for allowed origins, stream tokens for
EventSource, and the request id and access log that operators follow requests by. (The
same in a real Chromium: test_browser.py.)"""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import (
    Gateway,
    PulsarCluster,
    bearer,
    start_gateway,
    stop_gateway,
    token,
)
from tests.integration.test_limits import assert_problem
from tests.integration.test_stream import publish, sse_events

PAGE = "http://page.example:9000"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser") / "gateway.log"


@pytest.fixture(scope="module")
def web(pulsar_cluster: PulsarCluster, logs: Path) -> Iterator[Gateway]:
    """A gateway that lets pages on PAGE call it, logging JSON lines to `logs`."""
    gateway = start_gateway(
        pulsar_cluster, log=logs, cors_origins=f"{PAGE}, https://other.example", log_format="json"
    )
    try:
        yield gateway
    finally:
        stop_gateway(gateway)


def test_a_preflight_from_an_allowed_origin_is_answered_and_cached(
    web: Gateway, topic: str
) -> None:
    response = httpx.options(
        f"{web.url}/v1/topics/{topic}/messages",
        headers={
            "Origin": PAGE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == PAGE
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type", "idempotency-key"} <= set(allowed.split(", "))
    assert response.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in response.headers  # Bearer, no cookies


def test_answers_to_an_allowed_origin_expose_the_headers_clients_read(
    web: Gateway, topic: str
) -> None:
    with httpx.Client(base_url=web.url, headers={**bearer(), "Origin": PAGE}) as client:
        response = client.post(f"/v1/topics/{topic}/messages", json={"messages": [{"value": 1}]})
        refused = client.post("/v1/topics/bad name/x/y/messages", json={"messages": []})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == PAGE
    exposed = set(response.headers["access-control-expose-headers"].lower().split(", "))
    assert {"retry-after", "idempotent-replayed", "pulsar-cluster", "x-request-id"} <= exposed
    # Errors too: a page must be able to read the problem.
    assert refused.status_code >= 400
    assert refused.headers["access-control-allow-origin"] == PAGE


def test_other_origins_get_no_cors_headers(web: Gateway, topic: str) -> None:
    preflight = httpx.options(
        f"{web.url}/v1/topics/{topic}/messages",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert_problem(preflight, 403, "forbidden")
    assert "origin" in preflight.json()["detail"].lower()
    assert "access-control-allow-origin" not in preflight.headers
    with httpx.Client(
        base_url=web.url, headers={**bearer(), "Origin": "http://evil.example"}
    ) as client:
        response = client.get(f"/v1/topics/{topic}/messages")
    assert "access-control-allow-origin" not in response.headers


def test_cors_is_off_by_default(gateway: Gateway, topic: str) -> None:
    preflight = httpx.options(
        f"{gateway.url}/v1/topics/{topic}/messages",
        headers={"Origin": PAGE, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 405
    assert "access-control-allow-origin" not in preflight.headers


def _stream_token(client: httpx.Client, topic: str) -> dict[str, Any]:
    response = client.post(f"/v1/topics/{topic}/stream-tokens")
    assert response.status_code == 200, response.text
    made: dict[str, Any] = response.json()
    return made


def test_a_stream_token_opens_its_topic_stream_without_an_authorization_header(
    web: Gateway, topic: str
) -> None:
    with web.client() as client:
        publish(client, topic, [1, 2, 3])
        made = _stream_token(client, topic)
    assert made["expires_in_s"] == 300
    assert made["stream_url"] == f"/v1/topics/{topic}/stream?access_token={made['token']}"
    values = []
    with httpx.stream(
        "GET",
        f"{web.url}{made['stream_url']}&position=earliest",
        headers={"Origin": PAGE},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == PAGE
        for event in sse_events(response.iter_lines()):
            if "data" in event:
                values.append(orjson.loads(event["data"])["value"])
            if len(values) == 3:
                break
    assert values == [1, 2, 3]


def test_a_stream_token_opens_nothing_else(web: Gateway, topic: str) -> None:
    with web.client() as client:
        made = _stream_token(client, topic)
    stream_token = made["token"]
    other = f"{topic}-other"
    # Another topic's stream: the token names its topic.
    response = httpx.get(
        f"{web.url}/v1/topics/{other}/stream", params={"access_token": stream_token}
    )
    assert_problem(response, 403, "forbidden")
    # As a Bearer token, anywhere.
    for method, path in [
        ("GET", f"/v1/topics/{topic}/stream"),
        ("GET", f"/v1/topics/{topic}/messages"),
        ("POST", f"/v1/topics/{topic}/stream-tokens"),
    ]:
        response = httpx.request(method, f"{web.url}{path}", headers=bearer(stream_token))
        assert_problem(response, 401, "unauthenticated")
    # In the query string of any other route.
    response = httpx.get(
        f"{web.url}/v1/topics/{topic}/messages", params={"access_token": stream_token}
    )
    assert_problem(response, 401, "unauthenticated")
    # Forged, or signed with the gateway's own key.
    for forged in [stream_token[:-4] + "AAAA", token()]:
        response = httpx.get(f"{web.url}/v1/topics/{topic}/stream", params={"access_token": forged})
        assert_problem(response, 401, "unauthenticated")


def test_a_stream_token_needs_consume_on_the_tenant(web: Gateway, topic: str) -> None:
    publisher = token(scopes=["publish"])
    response = httpx.post(f"{web.url}/v1/topics/{topic}/stream-tokens", headers=bearer(publisher))
    assert_problem(response, 403, "forbidden")


def test_request_ids_are_echoed_or_made_and_logged_without_query_strings(
    web: Gateway, topic: str, logs: Path
) -> None:
    with web.client() as client:
        mine = client.get(f"/v1/topics/{topic}/messages", headers={"X-Request-Id": "req-42.a"})
        made = client.get(f"/v1/topics/{topic}/messages")
        odd = client.get(f"/v1/topics/{topic}/messages", headers={"X-Request-Id": "a b!"})
        stream_token = _stream_token(client, topic)["token"]
        with httpx.stream(
            "GET",
            f"{web.url}/v1/topics/{topic}/stream",
            params={"access_token": stream_token, "position": "earliest"},
            headers={"X-Request-Id": "with-token"},
        ) as response:
            assert response.status_code == 200
    assert mine.headers["x-request-id"] == "req-42.a"
    assert len(made.headers["x-request-id"]) == 16
    assert odd.headers["x-request-id"] not in ("a b!", "")
    # A stream's line is written once it has ended, which the server sees a moment later.
    deadline = time.monotonic() + 10
    while '"with-token"' not in logs.read_text():
        assert time.monotonic() < deadline, "no access line for the stream"
        time.sleep(0.1)
    text = logs.read_text()
    assert stream_token not in text
    assert "access_token" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = {
        line["request_id"]: line for line in lines if line["logger"] == "broker_gateway.access"
    }
    line = access["req-42.a"]
    assert line["method"] == "GET"
    assert line["route"] == "/v1/topics/{tenant}/{namespace}/{topic}/messages"
    assert line["status"] == 200
    assert line["tenant"] == "public"
    assert line["duration_ms"] >= 0
    assert line["level"] == "info"
    assert line["time"].endswith("Z")
    assert made.headers["x-request-id"] in access
    assert access["with-token"]["route"] == "/v1/topics/{tenant}/{namespace}/{topic}/stream"
