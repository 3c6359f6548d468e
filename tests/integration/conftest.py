"""Integration fixtures: real Pulsar standalones and real gateway processes in front of them.

The suite starts its own Pulsar clusters through local/pulsar and stops them at the end:
`east` (ports 6651/8081/3182, data under local/data/test-east) for every test, and `west`
(6652/8082/3183, local/data/test-west) for the geo-replication tests, each on an empty
data directory. A cluster already running there is reused and left running. The suite
holds the clusters' signing keys, so it always runs against clusters it started itself.

Pulsar itself runs with token authentication and authorization: the gateway and the tests
present tokens of superuser roles, signed with a test-only key per cluster, and a client
without one gets nothing (test_pulsar_auth.py).
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pulsar
import pytest

ROOT = Path(__file__).resolve().parents[2]
PULSAR_SCRIPT = ROOT / "local" / "pulsar"
# Names match the clusters the example manifests in topics/ use.
TEST_CLUSTERS = {
    "east": {"PULSAR_BROKER_PORT": "6651", "PULSAR_WEB_PORT": "8081", "PULSAR_BOOKIE_PORT": "3182"},
    "west": {"PULSAR_BROKER_PORT": "6652", "PULSAR_WEB_PORT": "8082", "PULSAR_BOOKIE_PORT": "3183"},
}


# Pulsar's superusers on the local test clusters; every other role may do nothing.
PULSAR_GATEWAY_ROLE = "broker-gateway"
PULSAR_ADMIN_ROLE = "tests-admin"  # the tests' own admin REST and native client calls
PULSAR_BROKER_ROLE = "pulsar-broker"  # the standalone's internal clients


def pulsar_signing_key(cluster: str) -> bytes:
    """The HS256 key a local test cluster checks tokens with: test-only, one per cluster,
    so a token works on its own cluster alone (Pulsar needs at least 256 bits)."""
    return f"integration-tests-only-pulsar-{cluster}-signing-key".encode()


def pulsar_token(role: str, cluster: str) -> str:
    """A Pulsar token for `role` on a local test cluster; Pulsar reads the role from `sub`."""
    return jwt.encode({"sub": role}, pulsar_signing_key(cluster), algorithm="HS256")


@dataclass(frozen=True)
class PulsarCluster:
    name: str
    service_url: str
    admin_url: str
    # The gateway's token for this cluster (in GATEWAY_CLUSTERS) and the tests' own.
    token: str
    admin_token: str
    # The broker listener the gateway connects through, where the broker advertises several.
    listener_name: str | None = None

    def admin_client(self) -> httpx.Client:
        """Pulsar's admin REST API (/admin/v2) with the tests' own token."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return httpx.Client(base_url=f"{self.admin_url}/admin/v2", headers=headers, timeout=30)

    def authentication(self) -> pulsar.AuthenticationToken:
        """The tests' own credentials for a native pulsar.Client."""
        return pulsar.AuthenticationToken(self.admin_token)


# The gateway checks every request's token; the suite signs its tokens with this secret.
GATEWAY_SECRET = "integration-tests-only-gateway-signing-secret"
ALL_SCOPES = ("publish", "consume", "admin")


def token(
    principal: str = "tests",
    tenants: Sequence[str] = ("*",),
    scopes: Sequence[str] = ALL_SCOPES,
    *,
    secret: str = GATEWAY_SECRET,
    expires_in_s: int = 3600,
    **claims: Any,
) -> str:
    """A gateway token (HS256); by default for every tenant and scope."""
    now = int(time.time())
    payload = {
        "sub": principal,
        "tenants": list(tenants),
        "scopes": list(scopes),
        "aud": "broker-gateway",
        "iat": now,
        "exp": now + expires_in_s,
        **claims,
    }
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(value: str | None = None) -> dict[str, str]:
    """An Authorization header with `value`, or a token for every tenant and scope."""
    return {"Authorization": f"Bearer {value or token()}"}


def pull_all(client: httpx.Client, queue: str, count: int, ack_deadline_ms: int) -> dict[int, str]:
    """Pull from `queue` until `count` messages valued 0..count-1 are leased: value ->
    receipt. Fails after 30 s."""
    pulled: dict[int, str] = {}
    deadline = time.monotonic() + 30
    while len(pulled) < count and time.monotonic() < deadline:
        response = client.post(
            f"{queue}/pull",
            json={"max_messages": 10, "wait_ms": 500, "ack_deadline_ms": ack_deadline_ms},
        )
        assert response.status_code == 200, response.text
        for message in response.json()["messages"]:
            pulled.setdefault(message["value"], message["receipt"])
    assert sorted(pulled) == list(range(count))
    return pulled


@dataclass(frozen=True)
class Gateway:
    url: str
    process: subprocess.Popen[bytes]

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client for this gateway, with a token for every tenant and scope."""
        return httpx.Client(base_url=self.url, headers=bearer(), **{"timeout": 30, **kwargs})


_TOKEN_PROVIDER = "org.apache.pulsar.broker.authentication.AuthenticationProviderToken"
_TOKEN_CLIENT_PLUGIN = "org.apache.pulsar.client.impl.auth.AuthenticationToken"


def _auth_properties(name: str) -> str:
    """Broker properties that turn on token authentication and authorization."""
    key = base64.b64encode(pulsar_signing_key(name)).decode()
    properties = {
        "authenticationEnabled": "true",
        "authorizationEnabled": "true",
        "authenticationProviders": _TOKEN_PROVIDER,
        "tokenSecretKey": f"data:;base64,{key}",
        "superUserRoles": f"{PULSAR_GATEWAY_ROLE},{PULSAR_ADMIN_ROLE},{PULSAR_BROKER_ROLE}",
        # The standalone's own clients (namespace setup, system topics, replicators of
        # peers registered without credentials) authenticate with these.
        "brokerClientAuthenticationPlugin": _TOKEN_CLIENT_PLUGIN,
        "brokerClientAuthenticationParameters": f"token:{pulsar_token(PULSAR_BROKER_ROLE, name)}",
    }
    return "".join(f"{k}={v}\n" for k, v in properties.items())


def _empty_data_dir(data_dir: Path) -> None:
    """Remove what an earlier session left, unless a Pulsar still runs there.

    Peers registered by an earlier session (perhaps before Pulsar ran with authentication)
    keep the credentials they were registered with: a plan compares their URLs only.
    """
    try:
        os.kill(int((data_dir / "pulsar.pid").read_text()), 0)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        shutil.rmtree(data_dir, ignore_errors=True)


class LocalPulsar:
    """A local Pulsar standalone named `name`, run by local/pulsar with token authentication
    and authorization, on its own ports and data directory (local/data/test-{name})."""

    def __init__(self, name: str, ports: dict[str, str], extra_properties: str = "") -> None:
        self.name = name
        self.data_dir = ROOT / "local" / "data" / f"test-{name}"
        self.admin_token = pulsar_token(PULSAR_ADMIN_ROLE, name)
        self.extra_properties = extra_properties
        self.env = {
            **os.environ,
            **ports,
            "PULSAR_CLUSTER": name,
            "PULSAR_DATA_DIR": str(self.data_dir),
            "PULSAR_CONF_EXTRA": str(self.data_dir / "auth.conf"),
            "PULSAR_AUTH_TOKEN": self.admin_token,
            "PULSAR_PYTHON": sys.executable,
        }
        self.cluster = PulsarCluster(
            name,
            f"pulsar://127.0.0.1:{ports['PULSAR_BROKER_PORT']}",
            f"http://127.0.0.1:{ports['PULSAR_WEB_PORT']}",
            token=pulsar_token(PULSAR_GATEWAY_ROLE, name),
            admin_token=self.admin_token,
        )

    def command(self, command: str) -> int:
        """`local/pulsar <command>` for this cluster: start, stop, status, run."""
        return subprocess.run([str(PULSAR_SCRIPT), command], env=self.env, check=False).returncode

    def start_empty(self) -> None:
        """Start on an empty data directory."""
        _empty_data_dir(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        properties = _auth_properties(self.name) + self.extra_properties
        (self.data_dir / "auth.conf").write_text(properties)
        self.start()

    def start(self) -> None:
        """Start on the data directory as it is, and wait until it serves."""
        if self.command("start") != 0:
            log = self.data_dir / "pulsar.log"
            pytest.fail(f"the local Pulsar {self.name} did not start; see {log}")

    def pid(self) -> int:
        return int((self.data_dir / "pulsar.pid").read_text())


def _local_cluster(name: str) -> Iterator[PulsarCluster]:
    """A local test cluster, started on an empty data directory unless it is running
    already (then it is reused and left running)."""
    pulsar = LocalPulsar(name, TEST_CLUSTERS[name])
    already_running = pulsar.command("status") == 0
    if not already_running:
        pulsar.start_empty()
    try:
        yield pulsar.cluster
    finally:
        if not already_running:
            pulsar.command("stop")


@pytest.fixture(scope="session")
def pulsar_cluster() -> Iterator[PulsarCluster]:
    """The cluster every test uses: `east`."""
    yield from _local_cluster("east")


@pytest.fixture(scope="session")
def west_cluster() -> Iterator[PulsarCluster]:
    """A second cluster, with its own metadata store, for geo-replication."""
    yield from _local_cluster("west")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clusters_setting(*clusters: PulsarCluster) -> str:
    """GATEWAY_CLUSTERS for these clusters; the first carries the data plane."""
    return json.dumps(
        [
            {
                "name": c.name,
                "service_url": c.service_url,
                "admin_url": c.admin_url,
                "token": c.token,
                "listener_name": c.listener_name,
            }
            for c in clusters
        ]
    )


def start_gateway(
    cluster: PulsarCluster,
    *peers: PulsarCluster,
    log: Path | None = None,
    port: int | None = None,
    **settings: str,
) -> Gateway:
    """A `broker-gateway serve` process on `port` (or a free one), ready to serve.

    It publishes and reads on `cluster`; manifests may also use `peers`. Its output goes
    to `log` (appended) when given.
    """
    port = port or free_port()
    env = {
        **os.environ,
        "GATEWAY_PORT": str(port),
        "GATEWAY_CLUSTERS": clusters_setting(cluster, *peers),
        "GATEWAY_AUTH_HS256_SECRET": GATEWAY_SECRET,
        **{f"GATEWAY_{k.upper()}": v for k, v in settings.items()},
    }
    output = None if log is None else log.open("ab")  # its stdout and stderr, when asked
    process = subprocess.Popen(
        [sys.executable, "-m", "broker_gateway", "serve"],
        env=env,
        cwd=ROOT,
        stdout=output,
        stderr=None if output is None else subprocess.STDOUT,
    )
    if output is not None:
        output.close()  # the child keeps its own descriptor
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gateway exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return Gateway(url, process)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    pytest.fail("gateway did not become ready in 30 s")


def stop_gateway(gateway: Gateway) -> None:
    gateway.process.terminate()
    try:
        gateway.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        gateway.process.wait()


@pytest.fixture(scope="session")
def gateway(pulsar_cluster: PulsarCluster) -> Iterator[Gateway]:
    gw = start_gateway(pulsar_cluster)
    try:
        yield gw
    finally:
        stop_gateway(gw)


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as client:
        yield client


@pytest.fixture(scope="session")
def native(pulsar_cluster: PulsarCluster) -> Iterator[pulsar.Client]:
    """The native pulsar-client, to check the gateway against."""
    client = pulsar.Client(
        pulsar_cluster.service_url,
        authentication=pulsar_cluster.authentication(),
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def topic() -> str:
    """A fresh topic path per test, so tests run in any order."""
    return f"public/default/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def admin(pulsar_cluster: PulsarCluster) -> Iterator[httpx.Client]:
    """Pulsar's admin REST API, to set up namespaces and inspect what the gateway did."""
    with pulsar_cluster.admin_client() as client:
        yield client


@pytest.fixture
def namespace(admin: httpx.Client) -> Iterator[str]:
    """A fresh namespace in `public`, deleted afterwards."""
    name = f"public/ns-{uuid.uuid4().hex[:10]}"
    admin.put(f"/namespaces/{name}").raise_for_status()
    try:
        yield name
    finally:
        admin.delete(f"/namespaces/{name}", params={"force": "true"})
