"""Fault-suite fixtures: a Pulsar to kill, a fault proxy in front of it, replicas to stop.

The suite's Pulsar (`faults`: broker 6653, web 8083, bookie 3184, data under
local/data/test-faults) advertises two listeners: `internal` on its own port, used by the
broker itself and by the suite's native clients, and `gateway`, which points through
Toxiproxy (16653 for the binary protocol, 18083 for the admin API). The gateway replicas
connect with listener `gateway`, so after a lookup they still go through the proxy, and
every fault the proxy makes reaches them.

Each test leaves a row for the report: local/data/faults/report.{json,md}, printed at the
end of the run and copied into the README's Reliability section.
"""

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pulsar
import pytest

from tests.faults.history import Findings, Stored
from tests.faults.load import Endpoint
from tests.integration.conftest import (
    ROOT,
    Gateway,
    LocalPulsar,
    PulsarCluster,
    free_port,
    start_gateway,
)

TOXIPROXY = Path(os.environ.get("TOXIPROXY_SERVER", ROOT / ".tools" / "bin" / "toxiproxy-server"))
TOXIPROXY_API = "http://127.0.0.1:18474"
BROKER_PORT, WEB_PORT, BOOKIE_PORT = 6653, 8083, 3184
PROXIED_BROKER_PORT, PROXIED_WEB_PORT = 16653, 18083
REPORT_DIR = ROOT / "local" / "data" / "faults"
RECEIPT_SECRET = "fault-suite-only-receipt-secret"


class Toxiproxy:
    """Toxiproxy's HTTP API: proxies and the toxics that make faults on them."""

    def __init__(self, api: httpx.Client) -> None:
        self.api = api

    def proxy(self, name: str, listen: int, upstream: int) -> None:
        addresses = {"listen": f"127.0.0.1:{listen}", "upstream": f"127.0.0.1:{upstream}"}
        self.api.post("/proxies", json={"name": name, **addresses}).raise_for_status()

    def toxic(self, proxy: str, kind: str, stream: str = "downstream", **attributes: int) -> None:
        toxic = {"name": f"{kind}-{stream}", "type": kind, "stream": stream}
        self.api.post(
            f"/proxies/{proxy}/toxics", json={**toxic, "attributes": attributes}
        ).raise_for_status()

    def heal(self) -> None:
        """Remove every toxic and enable every proxy."""
        for name, proxy in self.api.get("/proxies").json().items():
            for toxic in proxy["toxics"]:
                self.api.delete(f"/proxies/{name}/toxics/{toxic['name']}").raise_for_status()
            self.api.post(f"/proxies/{name}", json={"enabled": True}).raise_for_status()

    def disable(self, proxy: str) -> None:
        """Close its connections and refuse new ones."""
        self.api.post(f"/proxies/{proxy}", json={"enabled": False}).raise_for_status()


@pytest.fixture(scope="session")
def toxiproxy() -> Iterator[Toxiproxy]:
    if not TOXIPROXY.exists():
        pytest.fail(f"{TOXIPROXY} is missing: `make test-faults` builds it")
    process = subprocess.Popen(
        [str(TOXIPROXY), "-host", "127.0.0.1", "-port", "18474"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with httpx.Client(base_url=TOXIPROXY_API, timeout=10) as api:
        deadline = time.monotonic() + 10
        while True:
            try:
                api.get("/version").raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    process.kill()
                    pytest.fail("toxiproxy-server did not start")
                time.sleep(0.1)
        proxy = Toxiproxy(api)
        proxy.proxy("pulsar", PROXIED_BROKER_PORT, BROKER_PORT)
        proxy.proxy("pulsar-admin", PROXIED_WEB_PORT, WEB_PORT)
        try:
            yield proxy
        finally:
            process.terminate()
            process.wait()


class FaultyPulsar:
    """The suite's Pulsar: killed and restarted on its data, reached through the proxy."""

    def __init__(self) -> None:
        listeners = (
            f"internal:pulsar://127.0.0.1:{BROKER_PORT},"
            f"gateway:pulsar://127.0.0.1:{PROXIED_BROKER_PORT}"
        )
        self.local = LocalPulsar(
            "faults",
            {
                "PULSAR_BROKER_PORT": str(BROKER_PORT),
                "PULSAR_WEB_PORT": str(WEB_PORT),
                "PULSAR_BOOKIE_PORT": str(BOOKIE_PORT),
                # Advertised listeners replace the one advertised address.
                "PULSAR_ADVERTISED_ADDRESS": "",
            },
            f"advertisedAddress=\nadvertisedListeners={listeners}\ninternalListenerName=internal\n",
        )
        self.direct = self.local.cluster
        self.proxied = PulsarCluster(
            "faults",
            f"pulsar://127.0.0.1:{PROXIED_BROKER_PORT}",
            f"http://127.0.0.1:{PROXIED_WEB_PORT}",
            token=self.direct.token,
            admin_token=self.direct.admin_token,
            listener_name="gateway",
        )

    def kill(self) -> None:
        os.kill(self.local.pid(), signal.SIGKILL)

    def restart(self) -> None:
        self.local.start()

    def admin(self) -> httpx.Client:
        return self.direct.admin_client()

    def read_all(self, topic: str) -> list[Stored]:
        return read_all(self.direct, topic)


def read_all(cluster: PulsarCluster, topic: str) -> list[Stored]:
    """Everything the topic holds in `cluster`, in order, read with a native reader."""
    client = pulsar.Client(
        cluster.service_url,
        authentication=cluster.authentication(),
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
    )
    stored: list[Stored] = []
    try:
        reader = client.create_reader(f"persistent://{topic}", pulsar.MessageId.earliest)
        while reader.has_message_available():
            value = json.loads(reader.read_next(timeout_millis=10_000).data())
            stored.append(Stored(value["writer"], value["seq"]))
    finally:
        client.close()
    return stored


@pytest.fixture(scope="session")
def faulty_pulsar(toxiproxy: Toxiproxy) -> Iterator[FaultyPulsar]:
    cluster = FaultyPulsar()
    cluster.local.command("stop")
    cluster.local.start_empty()
    try:
        yield cluster
    finally:
        cluster.local.command("stop")


@pytest.fixture
def namespace(faulty_pulsar: FaultyPulsar) -> Iterator[str]:
    """A fresh namespace with broker deduplication on, as `producer` + `sequence_id` need."""
    name = f"public/f-{uuid.uuid4().hex[:8]}"
    with faulty_pulsar.admin() as admin:
        admin.put(f"/namespaces/{name}").raise_for_status()
        admin.post(f"/namespaces/{name}/deduplication", json=True).raise_for_status()
    yield name


@dataclass
class Replica:
    name: str
    port: int
    log: Path
    gateway: Gateway | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.name, f"http://127.0.0.1:{self.port}")

    def rss_mb(self) -> float:
        assert self.gateway is not None
        status = Path(f"/proc/{self.gateway.process.pid}/status").read_text()
        [line] = [x for x in status.splitlines() if x.startswith("VmRSS:")]
        return int(line.split()[1]) / 1024


class Replicas:
    """Gateway replicas on fixed ports (a restarted one comes back at its address),
    sharing one receipt secret, each logging to its own file."""

    def __init__(
        self,
        cluster: PulsarCluster,
        logs: Path,
        count: int,
        peers: tuple[PulsarCluster, ...] = (),
        **settings: str,
    ) -> None:
        self.cluster = cluster
        self.peers = peers
        self.settings = {
            "receipt_secret": RECEIPT_SECRET,
            "shutdown_delay_s": "1",
            "shutdown_grace_s": "10",
            **settings,
        }
        self.all = [Replica(f"r{i}", free_port(), logs / f"r{i}.log") for i in range(count)]
        for replica in self.all:
            self.start(replica)

    @property
    def endpoints(self) -> list[Endpoint]:
        return [r.endpoint for r in self.all]

    def start(self, replica: Replica) -> float:
        """Start it (once its earlier process has ended); the seconds until it was ready."""
        if replica.gateway is not None:
            replica.gateway.process.wait(timeout=30)
        started = time.monotonic()
        replica.gateway = start_gateway(
            self.cluster, *self.peers, log=replica.log, port=replica.port, **self.settings
        )
        return time.monotonic() - started

    def signal(self, replica: Replica, signum: int) -> None:
        assert replica.gateway is not None
        replica.gateway.process.send_signal(signum)

    def wait_exit(self, replica: Replica, timeout_s: float) -> int:
        assert replica.gateway is not None
        return replica.gateway.process.wait(timeout=timeout_s)

    def stop_all(self) -> None:
        for replica in self.all:
            if replica.gateway is not None and replica.gateway.process.poll() is None:
                replica.gateway.process.terminate()
        for replica in self.all:
            if replica.gateway is not None:
                try:
                    replica.gateway.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    replica.gateway.process.kill()

    def tracebacks(self) -> list[str]:
        """Log lines of every replica that show a trace."""
        return [
            f"{r.name}: {line}"
            for r in self.all
            if r.log.exists()
            for line in r.log.read_text(errors="replace").splitlines()
            if "Traceback" in line
        ]


class ReplicasFactory(Protocol):
    def __call__(
        self,
        cluster: PulsarCluster,
        count: int = 2,
        peers: tuple[PulsarCluster, ...] = (),
        **settings: str,
    ) -> Replicas: ...


@pytest.fixture
def replicas_factory(tmp_path: Path) -> Iterator[ReplicasFactory]:
    """Replicas in front of a cluster (and its peers); all stopped after the test."""
    made: list[Replicas] = []

    def make(
        cluster: PulsarCluster,
        count: int = 2,
        peers: tuple[PulsarCluster, ...] = (),
        **settings: str,
    ) -> Replicas:
        replicas = Replicas(cluster, tmp_path, count, peers, **settings)
        made.append(replicas)
        return replicas

    yield make
    for replicas in made:
        replicas.stop_all()


# --- the report ------------------------------------------------------------------------------

_ROWS: dict[str, dict[str, Any]] = {}


def report(kind: str, faults: int, findings: Findings, **extra: Any) -> None:
    """Keep this fault kind's row for the report, and its findings in detail beside it."""
    _ROWS[kind] = {"kind": kind, "faults": faults, **findings.summary(), **extra}
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    detail = {k: v[:200] if isinstance(v, list) else v for k, v in vars(findings).items()}
    slug = "".join(c if c.isalnum() else "-" for c in kind.split(" (")[0])
    (REPORT_DIR / f"{slug}.json").write_text(json.dumps(detail, indent=1, default=str) + "\n")


COLUMNS = (
    ("kind", "fault"),
    ("faults", "faults"),
    ("requests", "requests"),
    ("acknowledged", "messages acknowledged"),
    ("lost", "lost"),
    ("duplicated_keyed", "duplicated (key or sequence id)"),
    ("duplicated_unkeyed", "duplicated (plain retries)"),
    ("bad_5xx", "other 5xx"),
    ("fault_answers", "503/504 answers"),
    ("redeliveries", "queue redeliveries"),
    ("concurrent_leases", "leased to two workers at once"),
    ("recovery_s_max", "time to recover (s, max)"),
)


def render_report(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    lines = [head, rule]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(key, "")) for key, _ in COLUMNS) + " |")
    notes = [f"- {row['kind']}: {row['notes']}" for row in rows if row.get("notes")]
    return "\n".join([*lines, *(["", *notes] if notes else [])]) + "\n"


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _ROWS:
        return
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    rows = list(_ROWS.values())
    (REPORT_DIR / "report.json").write_text(json.dumps(rows, indent=2) + "\n")
    (REPORT_DIR / "report.md").write_text(render_report(rows))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _ROWS:
        terminalreporter.write_sep("=", "faults: the history, checked")
        terminalreporter.write(render_report(list(_ROWS.values())))
        terminalreporter.write(f"(also in {REPORT_DIR / 'report.md'})\n")
