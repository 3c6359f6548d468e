"""One fault scenario: load through the replicas, faults while it runs, then the checks."""

import time
from collections.abc import Callable

import httpx

from tests.faults.conftest import FaultyPulsar, Replicas
from tests.faults.history import (
    Fault,
    Findings,
    History,
    check_answers,
    check_queue,
    check_recovery,
    check_topic,
)
from tests.faults.load import Load
from tests.integration.conftest import bearer

SUBSCRIPTION = "work"


def start_load(replicas: Replicas, topic: str, history: History, **options: int) -> Load:
    """The subscription first (from the earliest message), so workers see every message."""
    url = f"{replicas.endpoints[0].url}/v1/topics/{topic}/subscriptions/{SUBSCRIPTION}"
    deadline = time.monotonic() + 60
    while True:  # a 503 says retry: Pulsar's admin API is sometimes busy after a fault
        response = httpx.put(
            url, json={"initial_position": "earliest"}, headers=bearer(), timeout=30
        )
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert response.status_code in (200, 201), response.text
    return Load(history, replicas.endpoints, topic, subscription=SUBSCRIPTION, **options).start()


def inject(
    history: History,
    kind: str,
    fault: Callable[[], None],
    heal: Callable[[], object],
    hold_s: float,
    replica: str | None = None,
) -> None:
    """Make the fault, hold it, heal it; recorded in the history."""
    started = time.monotonic()
    fault()
    time.sleep(hold_s)
    heal()
    history.fault(Fault(kind, started, time.monotonic(), replica))


def finish(load: Load, pulsar: FaultyPulsar, topic: str, drain_s: float = 120) -> Findings:
    """Stop writing, let the workers drain the subscription, stop, and check everything."""
    load.stop_writing()
    backlog = _wait_drained(pulsar, topic, drain_s)
    load.stop()
    history = load.history
    stored = pulsar.read_all(topic)
    findings = Findings()
    check_answers(history, findings)
    check_topic(history, stored, findings)
    check_recovery(history, findings)
    check_queue(history, {(s.writer, s.seq) for s in stored}, findings)
    assert backlog == 0, f"the subscription kept a backlog of {backlog}"
    return findings


def _wait_drained(pulsar: FaultyPulsar, topic: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    with pulsar.admin() as admin:
        while True:
            stats = admin.get(f"/persistent/{topic}/stats")
            backlog = -1
            if stats.status_code == 200:
                backlog = stats.json()["subscriptions"][SUBSCRIPTION]["msgBacklog"]
                if backlog == 0:
                    return 0
            if time.monotonic() > deadline:
                return backlog
            time.sleep(0.5)


def assert_promises_kept(findings: Findings, replicas: Replicas) -> None:
    """What must hold under every fault."""
    assert findings.lost == [], f"acknowledged but lost: {findings.lost[:20]}"
    assert findings.bad_errors == [], findings.bad_errors[:20]
    assert findings.duplicated_keyed == 0
    assert findings.out_of_order == [], findings.out_of_order[:20]
    assert findings.unacked == [], f"never acked by a worker: {findings.unacked[:20]}"
    assert all(s < 60 for s in findings.recovery_s), findings.recovery_s
    assert findings.concurrent_leases == [], findings.concurrent_leases[:20]
    assert findings.acknowledged > 0
    assert replicas.tracebacks() == []
