"""The HTTP error surface, with Pulsar unreachable: every failure is a problem+json."""

from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import HttpUrl, SecretStr

from broker_gateway.app import create_app
from broker_gateway.auth import mint
from broker_gateway.settings import Cluster, Settings

# Port 9 (discard) is closed on loopback: a cluster that is down.
DOWN = Cluster(
    name="down", service_url="pulsar://127.0.0.1:9", admin_url=HttpUrl("http://127.0.0.1:9")
)
TOPIC_URL = "/v1/topics/acme/orders/created/messages"


SECRET = "unit-tests-only-secret-of-at-least-32-bytes"
TOKEN = mint(
    SECRET,
    principal="tests",
    tenants=["*"],
    scopes=["publish", "consume", "admin"],
    expires_in_s=3600,
    audience="broker-gateway",
)


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(
        clusters=[DOWN],
        max_body_bytes=2048,
        max_messages_per_request=3,
        pulsar_operation_timeout_s=2,
        auth_hs256_secret=SecretStr(SECRET),
    )
    with TestClient(
        create_app(settings),
        raise_server_exceptions=False,
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        yield client


def assert_problem(response: object, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    body: dict[str, object] = response.json()  # type: ignore[attr-defined]
    assert body["code"] == code
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    return body


def test_livez_answers_without_pulsar(client: TestClient) -> None:
    assert client.get("/livez").status_code == 200


def test_readyz_names_the_cluster_that_is_down(client: TestClient) -> None:
    response = client.get("/readyz")
    body = assert_problem(response, 503, "broker_unavailable")
    assert body["clusters"] == {"down": body["clusters"]["down"]}  # type: ignore[index]
    assert "down" in str(body["detail"])
    assert response.headers["retry-after"].isdigit()


def test_unknown_route_is_a_not_found_problem(client: TestClient) -> None:
    assert_problem(client.get("/v1/nothing-here"), 404, "not_found")


def test_malformed_json_is_invalid_request(client: TestClient) -> None:
    response = client.post(
        TOPIC_URL, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "invalid_request")


@pytest.mark.parametrize(
    "message",
    [
        {},
        {"value": 1, "data": "aGk="},
        {"value": 1, "deliver_at": 1, "deliver_after_ms": 1},
        {"value": 1, "properties": {"a": 1}},
        {"value": 1, "event_time": "yesterday"},
        {"value": 1, "surprise": True},
    ],
)
def test_invalid_messages_are_rejected_before_reaching_pulsar(
    client: TestClient, message: dict[str, object]
) -> None:
    assert_problem(client.post(TOPIC_URL, json={"messages": [message]}), 422, "invalid_request")


def test_bad_base64_is_invalid_request(client: TestClient) -> None:
    body = assert_problem(
        client.post(TOPIC_URL, json={"messages": [{"data": "@@not base64@@"}]}),
        422,
        "invalid_request",
    )
    assert "base64" in str(body["detail"])


def test_too_many_messages_in_one_request_is_payload_too_large(client: TestClient) -> None:
    response = client.post(TOPIC_URL, json={"messages": [{"value": i} for i in range(4)]})
    assert_problem(response, 413, "payload_too_large")


def test_oversize_body_is_payload_too_large(client: TestClient) -> None:
    response = client.post(TOPIC_URL, json={"messages": [{"value": "x" * 4096}]})
    assert_problem(response, 413, "payload_too_large")


@pytest.mark.parametrize("tenant", ["persistent:%2F%2Fx", "..", "a b"])
def test_names_outside_pulsars_rules_are_invalid_request(client: TestClient, tenant: str) -> None:
    response = client.get(f"/v1/topics/{tenant}/ns/t/messages")
    assert response.status_code in (404, 422)
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("position", ["nowhere", "time:yesterday", "AAAA"])
def test_bad_position_is_invalid_request(client: TestClient, position: str) -> None:
    response = client.get(TOPIC_URL, params={"position": position})
    assert_problem(response, 422, "invalid_request")


def test_publish_while_pulsar_is_down_is_503_with_retry_after(client: TestClient) -> None:
    response = client.post(TOPIC_URL, json={"messages": [{"value": 1}]})
    assert response.status_code in (503, 504), response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"].isdigit()


def test_docs_work_offline(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "https://" not in page.text and "http://" not in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs/assets/{asset}" in page.text
        assert client.get(f"/docs/assets/{asset}").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "broker-gateway"


def test_read_while_pulsar_is_down_is_503_with_retry_after(client: TestClient) -> None:
    response = client.get(TOPIC_URL, params={"position": "earliest"})
    assert response.status_code in (503, 504), response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"].isdigit()


def test_idempotency_key_while_its_store_cannot_load_is_503(client: TestClient) -> None:
    response = client.post(
        TOPIC_URL, json={"messages": [{"value": 1}]}, headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "broker_unavailable"


MANIFEST = """
apiVersion: broker-gateway/v1
kind: Tenant
metadata: {name: acme}
spec: {clusters: [down]}
"""


def test_manifest_that_is_not_yaml_is_an_invalid_manifest_problem(client: TestClient) -> None:
    response = client.post(
        "/v1/manifests/plan", content="kind: [", headers={"content-type": "application/yaml"}
    )
    body = assert_problem(response, 422, "invalid_manifest")
    assert body["errors"]


def test_manifest_naming_an_unknown_cluster_is_refused_before_any_call(client: TestClient) -> None:
    response = client.post(
        "/v1/manifests/apply",
        content=MANIFEST.replace("[down]", "[mars]"),
        headers={"content-type": "application/yaml"},
    )
    body = assert_problem(response, 422, "invalid_manifest")
    assert any("unknown cluster mars" in e for e in body["errors"])  # type: ignore[attr-defined]


def test_manifest_json_with_a_bad_option_is_an_invalid_request(client: TestClient) -> None:
    response = client.post(
        "/v1/manifests/apply", json={"documents": [], "allow_destructive": "maybe"}
    )
    assert_problem(response, 422, "invalid_request")


def test_manifest_json_is_recognised_whatever_the_case_of_its_media_type(
    client: TestClient,
) -> None:
    response = client.post(
        "/v1/manifests/apply",
        content=b'{"documents": [], "allow_destructive": "maybe"}',
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    # Read as the JSON request it is (a bad option), not as a YAML manifest.
    body = assert_problem(response, 422, "invalid_request")
    assert "allow_destructive" in str(body["detail"])


def test_plan_against_a_cluster_that_is_down_is_unavailable(client: TestClient) -> None:
    response = client.post(
        "/v1/manifests/plan", content=MANIFEST, headers={"content-type": "application/yaml"}
    )
    assert_problem(response, 503, "broker_unavailable")
    assert response.headers["retry-after"].isdigit()


def test_export_of_an_invalid_tenant_name_is_an_invalid_request(client: TestClient) -> None:
    assert_problem(
        client.get("/v1/manifests/export", params={"tenant": "../admin"}), 422, "invalid_request"
    )


def test_a_chunked_body_over_the_limit_on_a_queue_route_is_413(client: TestClient) -> None:
    """Without a Content-Length the limit trips while FastAPI reads the body, which it used
    to report as unparsable JSON (422)."""
    chunks = iter([b'{"receipts": ["' + b"r" * 1024, b"r" * 2048 + b'"]}'])
    response = client.post(
        "/v1/topics/public/default/t/subscriptions/work/ack",
        content=chunks,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_publish_is_served_by_the_plain_route_and_documented_by_fastapis(
    client: TestClient,
) -> None:
    first = client.app.router.routes[0]  # type: ignore[attr-defined]
    path = "/v1/topics/{tenant}/{namespace}/{topic}/messages"
    assert (first.path, first.methods, type(first).__name__) == (path, {"POST"}, "FastRoute")
    assert not isinstance(first, APIRoute)
    document = client.get("/openapi.json").json()
    operation = document["paths"][path]["post"]
    assert {"200", "207", "401", "409", "422", "503"} <= operation["responses"].keys()
    assert any(p["name"] == "Idempotency-Key" for p in operation["parameters"])


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_an_idempotency_key_of_the_wrong_length_is_invalid_as_documented(
    client: TestClient, key: str
) -> None:
    response = client.post(
        TOPIC_URL, json={"messages": [{"value": 1}]}, headers={"Idempotency-Key": key}
    )
    body = assert_problem(response, 422, "invalid_request")
    assert body["errors"][0]["loc"] == ["header", "Idempotency-Key"]  # type: ignore[index]


def test_publish_without_a_token_is_401_before_anything_else(client: TestClient) -> None:
    response = client.post(
        "/v1/topics/a..b/x/y/messages", content=b"{", headers={"Authorization": ""}
    )
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")
