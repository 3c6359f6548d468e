"""Every route, three tenants, every kind of credential: 401, 403 or 2xx, exactly."""

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import (
    ALL_SCOPES,
    Gateway,
    PulsarCluster,
    bearer,
    start_gateway,
    stop_gateway,
    token,
)

TOPIC = "ns/events"
SUBSCRIPTION = "workers"


@dataclass(frozen=True)
class Endpoint:
    name: str
    scope: str
    # Sends the request for `tenant` with these headers.
    call: Callable[[httpx.Client, str, dict[str, str]], httpx.Response]


def _sub(tenant: str, suffix: str = "") -> str:
    return f"/v1/topics/{tenant}/{TOPIC}/subscriptions/{SUBSCRIPTION}{suffix}"


def _manifests(tenant: str) -> list[dict[str, Any]]:
    v1 = "broker-gateway/v1"
    return [
        {
            "apiVersion": v1,
            "kind": "Tenant",
            "metadata": {"name": tenant},
            "spec": {"clusters": ["east"]},
        },
        {"apiVersion": v1, "kind": "Namespace", "metadata": {"name": f"{tenant}/ns"}},
        {"apiVersion": v1, "kind": "Topic", "metadata": {"name": f"{tenant}/{TOPIC}"}},
        {
            "apiVersion": v1,
            "kind": "Subscription",
            "metadata": {"name": SUBSCRIPTION, "topic": f"{tenant}/{TOPIC}"},
            "spec": {"initial_position": "earliest"},
        },
    ]


def _stream(client: httpx.Client, tenant: str, headers: dict[str, str]) -> httpx.Response:
    # Only the status matters: leave as soon as the headers are in.
    with client.stream("GET", f"/v1/topics/{tenant}/{TOPIC}/stream", headers=headers) as r:
        if r.status_code >= 400:
            r.read()
        return r


def _delete(client: httpx.Client, tenant: str, headers: dict[str, str]) -> httpx.Response:
    doomed = f"/v1/topics/{tenant}/{TOPIC}/subscriptions/doomed-{uuid.uuid4().hex[:6]}"
    client.put(doomed, json={}, headers=bearer()).raise_for_status()
    return client.delete(doomed, headers=headers)


ENDPOINTS = [
    Endpoint(
        "publish",
        "publish",
        lambda c, t, h: c.post(
            f"/v1/topics/{t}/{TOPIC}/messages", json={"messages": [{"value": 1}]}, headers=h
        ),
    ),
    Endpoint(
        "publish raw",
        "publish",
        lambda c, t, h: c.post(
            f"/v1/topics/{t}/{TOPIC}/messages",
            content=b"raw",
            headers={**h, "content-type": "text/plain"},
        ),
    ),
    Endpoint(
        "read", "consume", lambda c, t, h: c.get(f"/v1/topics/{t}/{TOPIC}/messages", headers=h)
    ),
    Endpoint("stream", "consume", _stream),
    Endpoint("configure", "consume", lambda c, t, h: c.put(_sub(t), json={}, headers=h)),
    Endpoint("describe", "consume", lambda c, t, h: c.get(_sub(t), headers=h)),
    Endpoint("delete", "consume", _delete),
    Endpoint("pull", "consume", lambda c, t, h: c.post(_sub(t, "/pull"), json={}, headers=h)),
    Endpoint(
        "ack",
        "consume",
        lambda c, t, h: c.post(_sub(t, "/ack"), json={"receipts": ["x"]}, headers=h),
    ),
    Endpoint(
        "nack",
        "consume",
        lambda c, t, h: c.post(_sub(t, "/nack"), json={"receipts": ["x"]}, headers=h),
    ),
    Endpoint(
        "extend",
        "consume",
        lambda c, t, h: c.post(
            _sub(t, "/extend"), json={"receipts": ["x"], "ack_deadline_ms": 60000}, headers=h
        ),
    ),
    Endpoint(
        "seek",
        "consume",
        lambda c, t, h: c.post(_sub(t, "/seek"), json={"position": "earliest"}, headers=h),
    ),
    Endpoint(
        "redrive",
        "consume",
        lambda c, t, h: c.post(_sub(t, "/dead-letters/redrive"), json={}, headers=h),
    ),
    Endpoint(
        "validate",
        "admin",
        lambda c, t, h: c.post("/v1/manifests/validate", json=_manifests(t), headers=h),
    ),
    Endpoint(
        "plan", "admin", lambda c, t, h: c.post("/v1/manifests/plan", json=_manifests(t), headers=h)
    ),
    Endpoint(
        "apply",
        "admin",
        lambda c, t, h: c.post("/v1/manifests/apply", json=_manifests(t), headers=h),
    ),
    Endpoint(
        "export",
        "admin",
        lambda c, t, h: c.get("/v1/manifests/export", params={"tenant": t}, headers=h),
    ),
]


def _alg_none(tenant: str) -> str:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims: dict[str, Any] = {"sub": "mallory", "tenants": [tenant], "scopes": list(ALL_SCOPES)}
    claims |= {"aud": "broker-gateway", "exp": 4102444800}
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


# credential -> (headers for `tenant` and the endpoint's scope, expected status class)
CREDENTIALS: dict[str, Callable[[str, str, str], dict[str, str]]] = {
    "no token": lambda tenant, other, scope: {},
    "expired": lambda tenant, other, scope: bearer(token(tenants=[tenant], expires_in_s=-600)),
    "bad signature": lambda tenant, other, scope: bearer(
        token(tenants=[tenant], secret="another-secret-that-is-long-enough-to-sign")
    ),
    "alg none": lambda tenant, other, scope: bearer(_alg_none(tenant)),
    "wrong audience": lambda tenant, other, scope: bearer(token(tenants=[tenant], aud="other")),
    "other tenant": lambda tenant, other, scope: bearer(token(tenants=[other])),
    "missing scope": lambda tenant, other, scope: bearer(
        token(tenants=[tenant], scopes=[s for s in ALL_SCOPES if s != scope])
    ),
    "right scope": lambda tenant, other, scope: bearer(token(tenants=[tenant], scopes=[scope])),
}
EXPECTED = {
    "no token": 401,
    "expired": 401,
    "bad signature": 401,
    "alg none": 401,
    "wrong audience": 401,
    "other tenant": 403,
    "missing scope": 403,
    "right scope": 200,
}


@pytest.fixture(scope="module")
def tenants(gateway: Gateway) -> Iterator[list[str]]:
    """Three tenants, each with a topic and a subscription, made by the platform admin."""
    names = [f"auth-{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
    with gateway.client() as client:
        documents = [d for name in names for d in _manifests(name)]
        client.post("/v1/manifests/apply", json=documents).raise_for_status()
    yield names


@pytest.mark.parametrize("credential", list(CREDENTIALS))
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_every_route_answers_each_credential_as_expected(
    gateway: Gateway, tenants: list[str], endpoint: Endpoint, credential: str
) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for index, tenant in enumerate(tenants):
            other = tenants[(index + 1) % len(tenants)]
            headers = CREDENTIALS[credential](tenant, other, endpoint.scope)
            response = endpoint.call(client, tenant, headers)
            expected = EXPECTED[credential]
            if expected == 200:
                assert 200 <= response.status_code < 300, (tenant, response.text)
            else:
                assert response.status_code == expected, (tenant, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                code = "unauthenticated" if expected == 401 else "forbidden"
                assert response.json()["code"] == code
                if expected == 401:
                    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/topics/{a}%2F..%2F{b}/ns/events/messages",
        "/v1/topics/{a}/..%2F..%2F{b}%2Fns/events/messages",
        "/v1/topics/{a}/ns/..%2F..%2F{b}%2Fns%2Fevents/messages",
        "/v1/topics/{a}/%2E%2E/{b}/ns/events/messages",
        "/v1/topics/{a}/ns/persistent:%2F%2F{b}%2Fns%2Fevents/messages",
        "/v1/topics/persistent:%2F%2F{b}/ns/events/messages",
        "/v1/topics/{b}/ns/events/messages",
        "/v1/topics/{a}%2F{b}/ns/events/messages",
    ],
)
def test_path_tricks_never_reach_another_tenant(
    gateway: Gateway, tenants: list[str], path: str
) -> None:
    a, b = tenants[0], tenants[1]
    marker = uuid.uuid4().hex
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        response = client.post(
            path.format(a=a, b=b),
            json={"messages": [{"value": marker}]},
            headers=bearer(token(tenants=[a])),
        )
        assert response.status_code in (403, 404, 422), response.text
        assert response.headers["content-type"] == "application/problem+json"
    with gateway.client() as admin:
        page = admin.get(f"/v1/topics/{b}/{TOPIC}/messages", params={"limit": 1000}).json()
    assert marker not in [m.get("value") for m in page["messages"]]


def test_receipts_and_cursors_of_one_tenant_are_useless_in_another(
    gateway: Gateway, tenants: list[str]
) -> None:
    a, b = tenants[0], tenants[2]
    both = bearer(token(tenants=[a, b]))
    with httpx.Client(base_url=gateway.url, timeout=30, headers=both) as client:
        client.post(f"/v1/topics/{a}/{TOPIC}/messages", json={"messages": [{"value": "a"}]})
        client.post(f"/v1/topics/{b}/{TOPIC}/messages", json={"messages": [{"value": "b"}]})
        pulled = client.post(_sub(a, "/pull"), json={"wait_ms": 5000}).json()["messages"]
        receipt = pulled[0]["receipt"]
        acked = client.post(_sub(b, "/ack"), json={"receipts": [receipt]}).json()
        assert acked["succeeded"] == 0
        assert acked["failed"] == [{"receipt": receipt, "code": "invalid_receipt"}]

        cursor = client.get(f"/v1/topics/{a}/{TOPIC}/messages").json()["next"]
        elsewhere = client.get(f"/v1/topics/{b}/{TOPIC}/messages", params={"position": cursor})
        assert elsewhere.status_code == 422
        assert "another topic" in elsewhere.json()["detail"]


def test_tokens_and_payloads_never_reach_the_logs(
    pulsar_cluster: PulsarCluster, tenants: list[str], tmp_path: Path
) -> None:
    log = tmp_path / "gateway.log"
    gateway = start_gateway(pulsar_cluster, log=log, log_level="debug")
    secret_payload = f"payload-{uuid.uuid4().hex}"
    good, expired = token(tenants=[tenants[0]]), token(expires_in_s=-600)
    forged = f"{good[:-8]}AAAAAAAA"
    url = f"{gateway.url}/v1/topics/{tenants[0]}/{TOPIC}/messages"
    try:
        with httpx.Client(timeout=30) as client:
            ok = client.post(
                url, json={"messages": [{"value": secret_payload}]}, headers=bearer(good)
            )
            assert ok.status_code == 200
            malformed = client.post(
                url,
                content=f'{{"messages": [{{"value": "{secret_payload}"',
                headers={**bearer(good), "content-type": "application/json"},
            )
            assert malformed.status_code == 422
            assert secret_payload not in malformed.text  # nor echoed back
            for credential in (expired, forged, f"api-{secret_payload}"):
                assert client.get(url, headers=bearer(credential)).status_code == 401
            read = client.get(url, params={"position": "earliest"}, headers=bearer(good))
            assert secret_payload in read.text
    finally:
        stop_gateway(gateway)
    text = log.read_text()
    assert "idempotency store loaded" in text  # the log was captured at all
    for secret in (good, expired, forged, secret_payload, good.split(".")[2]):
        assert secret not in text
