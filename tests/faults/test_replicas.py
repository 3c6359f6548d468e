"""Gateway replicas stopped under load: one with SIGTERM (graceful), one with SIGKILL, three
times each, restarted at the same address."""

import signal
import time
import uuid

from tests.faults.conftest import FaultyPulsar, Replicas, ReplicasFactory, report
from tests.faults.history import History
from tests.faults.scenario import assert_promises_kept, finish, inject, start_load

FAULTS = 3


def test_replicas_stopped_and_killed_under_load_lose_nothing_acknowledged(
    faulty_pulsar: FaultyPulsar, namespace: str, replicas_factory: ReplicasFactory
) -> None:
    replicas: Replicas = replicas_factory(faulty_pulsar.proxied)
    graceful, killed = replicas.all
    topic = f"{namespace}/orders-{uuid.uuid4().hex[:6]}"
    history = History()
    load = start_load(replicas, topic, history)
    exits = []

    def stop_gracefully() -> None:
        replicas.signal(graceful, signal.SIGTERM)
        exits.append(replicas.wait_exit(graceful, timeout_s=15))

    for _ in range(FAULTS):
        time.sleep(3)
        inject(
            history,
            "replica SIGTERM",
            stop_gracefully,
            lambda: replicas.start(graceful),
            hold_s=1,
            replica=graceful.name,
        )
        time.sleep(3)
        inject(
            history,
            "replica SIGKILL",
            lambda: replicas.signal(killed, signal.SIGKILL),
            lambda: replicas.start(killed),
            hold_s=1,
            replica=killed.name,
        )
    time.sleep(3)
    findings = finish(load, faulty_pulsar, topic)
    report("gateway replica stopped (SIGTERM) or killed (SIGKILL)", 2 * FAULTS, findings)
    assert_promises_kept(findings, replicas)
    assert exits == [-signal.SIGTERM] * FAULTS  # each graceful stop ended within its grace
