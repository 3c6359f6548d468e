"""The gateway's credentials towards Pulsar: admin calls and peer registrations (against a
stand-in for the admin REST API), and the client's refusals."""

import asyncio
from typing import Any

import httpx
import pulsar
import pytest
from pydantic import SecretStr

from broker_gateway.errors import BrokerError
from broker_gateway.manifests.admin import ManifestAdmin
from broker_gateway.pulsar.admin import CredentialsRefused, PulsarAdmin
from broker_gateway.pulsar.errors import translate
from broker_gateway.settings import Cluster

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJicm9rZXItZ2F0ZXdheSJ9.sig"
PEER_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwZWVyIn0.sig"


def cluster(token: str | None) -> Cluster:
    return Cluster.model_validate(
        {
            "name": "east",
            "service_url": "pulsar://127.0.0.1:6650",
            "admin_url": "http://127.0.0.1:8080",
            "token": token,
        }
    )


class FakePulsar:
    """Records requests; answers each with `status` and `body`."""

    def __init__(self, status: int = 200, body: Any = None, text: str | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.status, self.body, self.text = status, body, text

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.text is not None:
            return httpx.Response(self.status, text=self.text)
        return httpx.Response(self.status, json=self.body)

    def admin(self, token: str | None) -> PulsarAdmin:
        return PulsarAdmin(
            cluster(token), timeout_s=5, retry_after_s=1, transport=httpx.MockTransport(self)
        )


def call(admin: PulsarAdmin, method: str, path: str, **kwargs: Any) -> Any:
    async def run() -> Any:
        try:
            return await admin.request(method, path, **kwargs)
        finally:
            await admin.close()

    return asyncio.run(run())


def test_every_admin_call_carries_the_clusters_token() -> None:
    pulsar = FakePulsar(body=["public"])
    assert call(pulsar.admin(TOKEN), "GET", "/admin/v2/tenants") == ["public"]
    assert pulsar.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_a_cluster_without_a_token_gets_no_authorization_header() -> None:
    pulsar = FakePulsar(body=[])
    call(pulsar.admin(None), "GET", "/admin/v2/tenants")
    assert "Authorization" not in pulsar.requests[0].headers


def test_a_token_never_shows_in_the_settings_repr() -> None:
    assert TOKEN not in repr(cluster(TOKEN))


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_is_a_broker_error_naming_the_cluster(status: int) -> None:
    reason = "Unauthorized to validateTenantOperation for clientAppId [broker-gateway]"
    pulsar = FakePulsar(status, {"reason": reason})
    with pytest.raises(CredentialsRefused) as refused:
        call(pulsar.admin(TOKEN), "GET", "/admin/v2/namespaces/acme")
    assert isinstance(refused.value, BrokerError)
    assert "cluster east refused the gateway's credentials" in refused.value.detail
    assert reason in refused.value.detail
    assert TOKEN not in refused.value.detail


JETTY_HTML = "<html>\n<head>\n<title>Error 401 Authentication required</title>"
JETTY_JSON = '{\n"message":"Authentication required",\n"url":"/admin/v2/brokers/ready"\n}'


@pytest.mark.parametrize("page", [JETTY_HTML, JETTY_JSON])
def test_a_401_without_a_token_says_the_cluster_needs_one(page: str) -> None:
    # Without a token, Jetty answers before Pulsar: its own page, not Pulsar's reason.
    pulsar = FakePulsar(401, text=page)
    with pytest.raises(CredentialsRefused) as refused:
        call(pulsar.admin(None), "GET", "/admin/v2/brokers/ready")
    assert "give it a token in GATEWAY_CLUSTERS" in refused.value.detail
    assert refused.value.detail.endswith(("Authentication required", "401 Unauthorized")), (
        refused.value.detail
    )


def put_peer(peer_tokens: dict[str, SecretStr]) -> dict[str, Any]:
    pulsar = FakePulsar(204, text="")
    admin = ManifestAdmin(pulsar.admin(TOKEN), peer_tokens)
    fields = {"service_url": "pulsar://127.0.0.1:6660", "admin_url": "http://127.0.0.1:8090"}
    asyncio.run(admin.put_peer("west", fields, create=True))
    [request] = pulsar.requests
    assert (request.method, request.url.path) == ("PUT", "/admin/v2/clusters/west")
    body: dict[str, Any] = httpx.Response(200, content=request.content).json()
    return body


def test_a_peer_with_a_token_is_registered_with_it_for_the_replicator() -> None:
    body = put_peer({"west": SecretStr(PEER_TOKEN), "east": SecretStr(TOKEN)})
    assert body == {
        "serviceUrl": "http://127.0.0.1:8090",
        "brokerServiceUrl": "pulsar://127.0.0.1:6660",
        "authenticationPlugin": "org.apache.pulsar.client.impl.auth.AuthenticationToken",
        "authenticationParameters": f"token:{PEER_TOKEN}",
    }


def test_a_peer_without_a_token_is_registered_without_credentials() -> None:
    body = put_peer({"east": SecretStr(TOKEN)})
    assert body == {
        "serviceUrl": "http://127.0.0.1:8090",
        "brokerServiceUrl": "pulsar://127.0.0.1:6660",
    }


def test_a_client_the_broker_does_not_authorize_is_a_broker_error_not_a_retry() -> None:
    error = translate(pulsar.AuthorizationError("refused"), retry_after_s=5)
    assert type(error) is BrokerError
    assert error.retry_after_s is None
    assert "refused the gateway's credentials" in error.detail
