"""A region fails: east, the gateway's home cluster, is killed (SIGKILL) under publish,
pull/ack and read load, and restarted after an outage. The topic replicates east <-> west,
so publishes and workers carry on in west, and come back to east once it is healthy; a
namespace that stays in east answers 503 and never sends a byte to west.

One run (the module's fixture) makes the whole history; each test checks one promise of it.
Its timeline is the README's (Region failover).
"""

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import yaml

from tests.faults.conftest import REPORT_DIR, Replicas, read_all, report
from tests.faults.history import (
    Fault,
    Findings,
    History,
    Stored,
    check_answers,
    check_queue,
    check_topic,
)
from tests.faults.load import wait_until
from tests.faults.scenario import SUBSCRIPTION, start_load
from tests.integration.conftest import (
    GATEWAY_SECRET,
    ROOT,
    TEST_CLUSTERS,
    LocalPulsar,
    PulsarCluster,
    bearer,
    clusters_setting,
)

OUTAGE_S = 20
# Fail back after this long healthy: short, so the run is (the default is 10 s).
HEALTHY_FOR_S = 5


@dataclass
class TwoRegions:
    east: LocalPulsar
    west: LocalPulsar

    def kill_east(self) -> None:
        os.kill(self.east.pid(), 9)

    def restart_east(self) -> None:
        self.east.start()


@pytest.fixture(scope="module")
def regions() -> Iterator[TwoRegions]:
    """East and west, each with its own metadata store, on empty data directories."""
    both = TwoRegions(*(LocalPulsar(name, TEST_CLUSTERS[name]) for name in ("east", "west")))
    for cluster in (both.east, both.west):
        cluster.command("stop")
    threads = [threading.Thread(target=c.start_empty) for c in (both.east, both.west)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        yield both
    finally:
        for cluster in (both.east, both.west):
            cluster.command("stop")


def manifests(tenant: str) -> list[dict[str, Any]]:
    """`{tenant}/orders` replicates east <-> west; `{tenant}/resident` stays in east."""
    v1 = "broker-gateway/v1"
    return [
        {
            "apiVersion": v1,
            "kind": "Tenant",
            "metadata": {"name": tenant},
            "spec": {"clusters": ["east", "west"], "replication": ["east", "west"]},
        },
        {
            "apiVersion": v1,
            "kind": "Namespace",
            "metadata": {"name": f"{tenant}/orders"},
            "spec": {"deduplication": True},
        },
        {
            "apiVersion": v1,
            "kind": "Namespace",
            "metadata": {"name": f"{tenant}/resident"},
            "spec": {"replication": ["east"]},
        },
        {"apiVersion": v1, "kind": "Topic", "metadata": {"name": f"{tenant}/orders/events"}},
        {"apiVersion": v1, "kind": "Topic", "metadata": {"name": f"{tenant}/resident/events"}},
        {
            "apiVersion": v1,
            "kind": "Subscription",
            "metadata": {"name": SUBSCRIPTION, "topic": f"{tenant}/orders/events"},
            "spec": {"type": "shared", "initial_position": "earliest"},
        },
    ]


def apply(tenant: str, clusters: list[PulsarCluster], tmp_path: Path) -> None:
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(manifests(tenant)))
    env = {
        **os.environ,
        "GATEWAY_CLUSTERS": clusters_setting(*clusters),
        "GATEWAY_AUTH_HS256_SECRET": GATEWAY_SECRET,
    }
    done = subprocess.run(
        [sys.executable, "-m", "broker_gateway", "apply", str(path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@dataclass
class _Client:
    """A client of the topic on a thread of its own, noting the (writer, seq) it sees."""

    url: str
    topic: str
    seen: list[tuple[str, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        raise NotImplementedError


@dataclass
class Reader(_Client):
    """A client paging through the topic with `next` cursors, as a consumer of the Read
    API does, through the outage."""

    errors: list[str] = field(default_factory=list)

    def _run(self) -> None:
        position = "earliest"
        with httpx.Client(base_url=self.url, headers=bearer(), timeout=30) as client:
            while not self._stop.is_set():
                try:
                    page = client.get(
                        f"/v1/topics/{self.topic}/messages",
                        params={"position": position, "limit": 100, "wait_ms": 500},
                    )
                except httpx.TransportError as exc:
                    self.errors.append(f"no answer: {exc}")
                    time.sleep(0.5)
                    continue
                if page.status_code != 200:
                    if page.status_code not in (503, 504):
                        self.errors.append(f"{page.status_code} {page.text[:200]}")
                    time.sleep(0.5)
                    continue
                body = page.json()
                self.seen += [(m["value"]["writer"], m["value"]["seq"]) for m in body["messages"]]
                position = body["next"]


@dataclass
class Follower(_Client):
    """A client following the topic live (NDJSON stream) through the outage, reconnecting
    from its last cursor whenever the stream ends."""

    reconnects: list[str] = field(default_factory=list)

    def _run(self) -> None:
        position = "earliest"
        headers = {**bearer(), "accept": "application/x-ndjson"}
        timeout = httpx.Timeout(30, read=2)  # heartbeats come every second
        with httpx.Client(base_url=self.url, headers=headers, timeout=timeout) as client:
            while not self._stop.is_set():
                why = "ended"
                try:
                    with client.stream(
                        "GET",
                        f"/v1/topics/{self.topic}/stream",
                        params={"position": position},
                    ) as response:
                        if response.status_code != 200:
                            why = f"{response.status_code}"
                            time.sleep(0.5)
                        else:
                            for line in response.iter_lines():
                                if self._stop.is_set():
                                    return
                                if not line:
                                    continue
                                event = json.loads(line)
                                if "reconnect" in event or "error" in event:
                                    why = json.dumps(event)
                                    break
                                self.seen.append((event["value"]["writer"], event["value"]["seq"]))
                                position = event["cursor"]
                except httpx.TransportError as exc:
                    why = f"no answer: {type(exc).__name__}"
                self.reconnects.append(why)


@dataclass
class Run:
    """What the one run made: the history, and what each cluster holds after it."""

    history: History
    findings: Findings
    east_stored: int
    west_resident: int
    resident_answers: list[int]
    reader: Reader
    follower: Follower
    timeline: dict[str, Any]
    replicas: Replicas


@pytest.fixture(scope="module")
def run(regions: TwoRegions, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp_path = tmp_path_factory.mktemp("region")
    east, west = regions.east.cluster, regions.west.cluster
    tenant = f"geo-{uuid.uuid4().hex[:8]}"
    apply(tenant, [east, west], tmp_path)
    topic, resident = f"{tenant}/orders/events", f"{tenant}/resident/events"
    replicas = Replicas(
        east,
        tmp_path,
        2,
        (west,),
        receipt_secret="region-suite-only-receipt-secret",
        stream_heartbeat_s="1",
        failover_healthy_for_s=str(HEALTHY_FOR_S),
        # Idempotency-Key records follow the data: their topic replicates too.
        idempotency_topic=f"{tenant}/orders/idempotency",
    )
    history = History()
    load = start_load(replicas, topic, history)
    reader = Reader(replicas.endpoints[1].url, topic).start()
    follower = Follower(replicas.endpoints[0].url, topic).start()
    try:
        time.sleep(5)
        killed = time.monotonic()
        regions.kill_east()
        resident_answers = _publish_meanwhile(replicas.endpoints[0].url, resident, OUTAGE_S)
        restarted = time.monotonic()
        regions.restart_east()
        healed = time.monotonic()
        history.fault(Fault("east killed", killed, healed))

        # Until every replica has answered from east again: fail back.
        def failed_back() -> bool:
            return all(
                any(
                    r.cluster == "east" and r.started > healed and r.replica == replica.name
                    for r in list(history.requests)
                    if r.operation == "publish"
                )
                for replica in replicas.all
            )

        wait_until(failed_back, 60, "publishes answered from east again")
        time.sleep(3)
        load.stop_writing()
        acknowledged = {
            (p.writer, p.seq)
            for p in history.publishes
            if p.request.status is not None and 200 <= p.request.status < 300
        }
        _settle(lambda: acknowledged <= _held(east, topic), 120)
        missing = acknowledged - _held(east, topic)
        assert not missing, _diagnose(missing, history, west, topic)

        def workers_acked_everything() -> bool:
            findings = Findings()
            check_queue(history, acknowledged, findings)
            return not findings.unacked

        _settle(workers_acked_everything, 120)
        _settle(lambda: acknowledged <= set(reader.seen) & set(follower.seen), 30)
    finally:
        load.stop()
        reader.stop()
        follower.stop()
    try:
        stored = [(s.writer, s.seq) for s in read_all(east, topic)]
        findings = Findings()
        check_answers(history, findings)
        check_topic(history, [Stored(*s) for s in stored], findings)
        check_queue(history, set(stored), findings)
        timeline = _timeline(history, killed, restarted, healed)
        west_order = Findings()
        check_topic(history, read_all(west, topic), west_order)
        timeline |= {
            "out_of_order_in_east": len(findings.out_of_order),
            "out_of_order_in_west": len(west_order.out_of_order),
            "follower_reconnects": len(follower.reconnects),
        }
        yield Run(
            history,
            findings,
            len(stored),
            len(read_all(west, resident)) if _exists(west, resident) else 0,
            resident_answers,
            reader,
            follower,
            timeline,
            replicas,
        )
    finally:
        replicas.stop_all()


def _diagnose(
    missing: set[tuple[str, int]], history: History, west: PulsarCluster, topic: str
) -> str:
    """Why east lacks acknowledged messages: where they were answered from, and whether
    west has them."""
    answered = {
        (p.writer, p.seq): p.request.cluster for p in history.publishes if p.request.status == 200
    }
    in_west = _held(west, topic)
    with west.admin_client() as admin:
        replication = admin.get(f"/persistent/{topic}/stats").json().get("replication")
    sample = sorted(missing)[:10]
    return (
        f"{len(missing)} acknowledged messages not in east, e.g. "
        f"{[(m, answered.get(m), m in in_west) for m in sample]}; west's replication: "
        f"{json.dumps(replication)[:1500]}"
    )


def _held(cluster: PulsarCluster, topic: str) -> set[tuple[str, int]]:
    return {(s.writer, s.seq) for s in read_all(cluster, topic)}


def _settle(condition: Callable[[], bool], timeout_s: float) -> None:
    """Wait until `condition` holds or `timeout_s` passes (the test then says what is off)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)


def _exists(cluster: PulsarCluster, topic: str) -> bool:
    with cluster.admin_client() as admin:
        return admin.get(f"/persistent/{topic}/stats").status_code == 200


def _publish_meanwhile(url: str, topic: str, duration_s: float) -> list[int]:
    """Publish to `topic` for `duration_s`, one message at a time; each answer's status."""
    statuses: list[int] = []
    deadline = time.monotonic() + duration_s
    with httpx.Client(base_url=url, headers=bearer(), timeout=60) as client:
        while time.monotonic() < deadline:
            response = client.post(
                f"/v1/topics/{topic}/messages",
                json={"messages": [{"value": {"writer": "resident", "seq": len(statuses)}}]},
            )
            statuses.append(response.status_code)
            if response.status_code in (503, 504):
                assert response.headers.get("retry-after"), response.text
            time.sleep(0.5)
    return statuses


def _timeline(history: History, killed: float, restarted: float, healed: float) -> dict[str, Any]:
    publishes = sorted(
        (p.request for p in history.publishes if p.request.status == 200),
        key=lambda r: r.ended,
    )
    from_west = [r for r in publishes if r.cluster == "west"]
    back_in_east = [r for r in publishes if r.cluster == "east" and r.started > healed]
    during = [r for r in history.publishes if killed <= r.request.started < healed]
    return {
        "outage_s": round(restarted - killed, 1),
        "east_restart_s": round(healed - restarted, 1),
        "first_answer_from_west_s": round(from_west[0].ended - killed, 2) if from_west else None,
        "answered_from_west": len(from_west),
        "publish_attempts_during_outage": len(during),
        "failed_during_outage": sum(1 for p in during if p.request.status != 200),
        "slowest_publish_during_outage_s": round(
            max((p.request.ended - p.request.started for p in during), default=0), 2
        ),
        "fail_back_after_restart_s": round(back_in_east[0].ended - healed, 1)
        if back_in_east
        else None,
    }


def test_publishes_fail_over_to_west_and_nothing_acknowledged_is_lost(run: Run) -> None:
    findings, timeline = run.findings, run.timeline
    report(
        "east region killed (failover to west)",
        1,
        findings,
        notes=f"timeline: {json.dumps(timeline)}",
    )
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "region-timeline.json").write_text(json.dumps(timeline, indent=1) + "\n")
    assert findings.lost == [], f"acknowledged but lost: {findings.lost[:20]}"
    assert findings.bad_errors == [], findings.bad_errors[:20]
    assert timeline["answered_from_west"] > 0, timeline
    assert timeline["fail_back_after_restart_s"] is not None, timeline
    assert run.replicas.tracebacks() == []


def test_everything_published_during_the_outage_is_in_east_after_it_returns(run: Run) -> None:
    west_answered = {
        (p.writer, p.seq) for p in run.history.publishes if p.request.cluster == "west"
    }
    assert west_answered
    assert run.findings.lost == []  # read back from east: west's messages included


def test_workers_continue_in_west_and_ack_every_message(run: Run) -> None:
    assert run.findings.unacked == [], run.findings.unacked[:20]
    pulls_during = [
        r
        for r in run.history.requests
        if r.operation == "pull" and r.status == 200 and r.started > run.history.faults[0].started
    ]
    assert pulls_during


def test_a_namespace_that_stays_in_east_answers_503_and_never_reaches_west(run: Run) -> None:
    assert run.resident_answers
    assert set(run.resident_answers) <= {503, 504}, run.resident_answers
    assert run.west_resident == 0


def test_a_reader_resumes_in_west_and_misses_nothing(run: Run) -> None:
    acknowledged = {(p.writer, p.seq) for p in run.history.publishes if p.request.status == 200}
    assert run.reader.errors == []
    missed = acknowledged - set(run.reader.seen)
    assert not missed, sorted(missed)[:20]


def test_a_live_stream_reconnects_and_resumes_in_west_missing_nothing(run: Run) -> None:
    acknowledged = {(p.writer, p.seq) for p in run.history.publishes if p.request.status == 200}
    moved = [r for r in run.follower.reconnects if "went down" in r]
    assert moved, run.follower.reconnects
    missed = acknowledged - set(run.follower.seen)
    assert not missed, sorted(missed)[:20]
