"""Network faults between the replicas and the broker, made by Toxiproxy on the broker's
binary and admin ports: latency spikes, connections reset, connections that black-hole,
each three times, then healed."""

import time
import uuid
from collections.abc import Callable

from tests.faults.conftest import FaultyPulsar, ReplicasFactory, Toxiproxy, report
from tests.faults.history import History
from tests.faults.scenario import assert_promises_kept, finish, inject, start_load

ROUNDS = 3
PROXIES = ("pulsar", "pulsar-admin")


def _on_both_ways(toxiproxy: Toxiproxy, kind: str, **attributes: int) -> Callable[[], None]:
    def fault() -> None:
        for proxy in PROXIES:
            for stream in ("upstream", "downstream"):
                toxiproxy.toxic(proxy, kind, stream, **attributes)

    return fault


def test_network_faults_between_gateway_and_broker_lose_nothing_acknowledged(
    faulty_pulsar: FaultyPulsar,
    toxiproxy: Toxiproxy,
    namespace: str,
    replicas_factory: ReplicasFactory,
) -> None:
    replicas = replicas_factory(faulty_pulsar.proxied)
    topic = f"{namespace}/orders-{uuid.uuid4().hex[:6]}"
    history = History()
    faults = {
        # name: (fault, seconds held)
        "latency spike (1.5 s each way)": (
            _on_both_ways(toxiproxy, "latency", latency=1500, jitter=500),
            5.0,
        ),
        "connections reset": (_on_both_ways(toxiproxy, "reset_peer", timeout=0), 3.0),
        # No byte gets through, then the connections are closed, as TCP gives up on a path
        # that answers nothing (dropping bytes from a stream that goes on would corrupt it,
        # which TCP never does).
        "black hole (no answer)": (_on_both_ways(toxiproxy, "timeout", timeout=6000), 6.0),
    }
    load = start_load(replicas, topic, history)
    try:
        for _ in range(ROUNDS):
            for kind, (fault, hold_s) in faults.items():
                time.sleep(3)
                inject(history, kind, fault, toxiproxy.heal, hold_s)
        time.sleep(3)
    finally:
        toxiproxy.heal()
    findings = finish(load, faulty_pulsar, topic)
    report(
        "network faults (latency, reset, black hole)",
        ROUNDS * len(faults),
        findings,
    )
    assert_promises_kept(findings, replicas)
