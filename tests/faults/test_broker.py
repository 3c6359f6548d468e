"""The broker is killed (SIGKILL) and restarted, three times, under publish and pull/ack load
through two replicas."""

import time
import uuid

from tests.faults.conftest import FaultyPulsar, ReplicasFactory, report
from tests.faults.history import History
from tests.faults.scenario import assert_promises_kept, finish, inject, start_load

FAULTS = 3


def test_broker_killed_under_load_loses_nothing_acknowledged(
    faulty_pulsar: FaultyPulsar, namespace: str, replicas_factory: ReplicasFactory
) -> None:
    replicas = replicas_factory(faulty_pulsar.proxied)
    topic = f"{namespace}/orders-{uuid.uuid4().hex[:6]}"
    history = History()
    load = start_load(replicas, topic, history)
    for _ in range(FAULTS):
        time.sleep(3)
        inject(history, "broker killed", faulty_pulsar.kill, faulty_pulsar.restart, hold_s=1)
    time.sleep(3)
    findings = finish(load, faulty_pulsar, topic)
    outage = [r for r in history.requests if r.operation == "readyz" and r.status == 503]
    report("broker killed (SIGKILL, restarted)", FAULTS, findings)
    assert_promises_kept(findings, replicas)
    assert outage, "/readyz never reported the broker down"
