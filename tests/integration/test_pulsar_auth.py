"""Defence in depth: Pulsar itself refuses a client that bypasses the gateway.

The local clusters run with token authentication and authorization (see conftest.py): the
gateway presents its own superuser token, and anyone else reaching for the broker's ports
directly gets nothing, while the gateway goes on publishing and reading.
"""

import asyncio
import logging
from collections.abc import Iterator

import httpx
import pulsar
import pytest

from broker_gateway.errors import CredentialsRefused
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.settings import Cluster
from tests.integration.conftest import (
    PULSAR_GATEWAY_ROLE,
    TEST_CLUSTERS,
    PulsarCluster,
    pulsar_token,
)

# A role that is no superuser and has been granted nothing.
STRANGER = "stranger"


@pytest.fixture
def published(http: httpx.Client, topic: str) -> Iterator[str]:
    """A topic holding one message, published through the gateway; checked afterwards to
    hold just that one."""
    response = http.post(f"/v1/topics/{topic}/messages", json={"messages": [{"value": "kept"}]})
    assert response.status_code == 200, response.text
    yield topic
    page = http.get(f"/v1/topics/{topic}/messages", params={"position": "earliest"})
    assert page.status_code == 200, page.text
    assert [m["value"] for m in page.json()["messages"]] == ["kept"]


def bypass(cluster: PulsarCluster, token: str | None) -> pulsar.Client:
    """A native client straight to the broker, with `token` or with none."""
    return pulsar.Client(
        cluster.service_url,
        authentication=pulsar.AuthenticationToken(token) if token else None,
        operation_timeout_seconds=5,
        connection_timeout_ms=2000,
        logger=logging.getLogger("pulsar.bypass"),
    )


def test_the_gateway_publishes_and_reads_with_its_own_token(
    pulsar_cluster: PulsarCluster, http: httpx.Client, topic: str
) -> None:
    values = list(range(5))
    response = http.post(
        f"/v1/topics/{topic}/messages", json={"messages": [{"value": v} for v in values]}
    )
    assert response.status_code == 200, response.text
    page = http.get(f"/v1/topics/{topic}/messages", params={"position": "earliest"})
    assert page.status_code == 200, page.text
    assert [m["value"] for m in page.json()["messages"]] == values


@pytest.mark.parametrize(
    "credentials",
    ["none", "another cluster's token"],
)
def test_a_native_client_without_a_valid_token_can_neither_produce_nor_consume(
    pulsar_cluster: PulsarCluster, published: str, credentials: str
) -> None:
    # The gateway's own role, signed with west's key: a real token, for the wrong cluster.
    token = None if credentials == "none" else pulsar_token(PULSAR_GATEWAY_ROLE, "west")
    # Pulsar drops the connection of a client it cannot authenticate: the client only
    # sees its operation time out.
    assert_refused(bypass(pulsar_cluster, token), published, pulsar.PulsarException)


def test_a_role_without_grants_can_neither_produce_nor_consume(
    pulsar_cluster: PulsarCluster, published: str
) -> None:
    client = bypass(pulsar_cluster, pulsar_token(STRANGER, pulsar_cluster.name))
    assert_refused(client, published, pulsar.AuthorizationError)


def assert_refused(client: pulsar.Client, topic: str, refusal: type[Exception]) -> None:
    """A producer, a consumer and a reader on `topic` all fail with `refusal`; `client` is
    closed."""
    name = f"persistent://{topic}"
    try:
        with pytest.raises(refusal):
            client.create_producer(name)
        with pytest.raises(refusal):
            client.subscribe(name, "bypass", initial_position=pulsar.InitialPosition.Earliest)
        with pytest.raises(refusal):
            client.create_reader(name, pulsar.MessageId.earliest)
    finally:
        client.close()


def test_the_admin_api_without_a_token_is_401(
    pulsar_cluster: PulsarCluster, published: str
) -> None:
    with httpx.Client(base_url=f"{pulsar_cluster.admin_url}/admin/v2", timeout=30) as anonymous:
        for path in (
            "/tenants",
            "/namespaces/public",
            f"/persistent/{published}/stats",
            "/brokers/health",
        ):
            assert anonymous.get(path).status_code == 401, path
        created = anonymous.put("/tenants/bypass", json={"allowedClusters": [pulsar_cluster.name]})
        assert created.status_code == 401


def test_a_role_without_grants_is_refused_on_a_tenants_namespace(
    pulsar_cluster: PulsarCluster, published: str
) -> None:
    headers = {"Authorization": f"Bearer {pulsar_token(STRANGER, pulsar_cluster.name)}"}
    with httpx.Client(
        base_url=f"{pulsar_cluster.admin_url}/admin/v2", headers=headers, timeout=30
    ) as stranger:
        for path in (
            "/namespaces/public/default",
            "/persistent/public/default",
            f"/persistent/{published}/stats",
        ):
            assert stranger.get(path).status_code in (401, 403), path
        cleared = stranger.delete(f"/persistent/{published}", params={"force": "true"})
        assert cleared.status_code in (401, 403)


@pytest.mark.parametrize(
    ("credential", "explanation"),
    [
        (None, "none set: give it a token in GATEWAY_CLUSTERS"),
        ("another cluster's", "refused the gateway's credentials"),
        (STRANGER, "refused the gateway's credentials"),
    ],
)
def test_the_gateways_admin_client_says_when_pulsar_refuses_its_credentials(
    pulsar_cluster: PulsarCluster, credential: str | None, explanation: str
) -> None:
    other = next(name for name in TEST_CLUSTERS if name != pulsar_cluster.name)
    token = {
        None: None,
        "another cluster's": pulsar_token(PULSAR_GATEWAY_ROLE, other),
        STRANGER: pulsar_token(STRANGER, pulsar_cluster.name),
    }[credential]
    cluster = Cluster.model_validate(
        {
            "name": pulsar_cluster.name,
            "service_url": pulsar_cluster.service_url,
            "admin_url": pulsar_cluster.admin_url,
            "token": token,
        }
    )

    async def list_namespaces() -> None:
        admin = PulsarAdmin(cluster, timeout_s=10)
        try:
            await admin.request("GET", "/admin/v2/namespaces/public")
        finally:
            await admin.close()

    with pytest.raises(CredentialsRefused) as refused:
        asyncio.run(list_namespaces())
    assert explanation in refused.value.detail
    assert f"cluster {pulsar_cluster.name}" in refused.value.detail
    if token is not None:
        assert token not in refused.value.detail
