"""A subscription declared by manifest and one declared over HTTP behave the same: dead
letters, redrive, and a configuration change reaching a busy replica. Plus the defects the
work queue's review found, each with the test that showed it."""

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.conftest import Gateway, PulsarCluster, start_gateway, stop_gateway
from tests.integration.test_queues import SECRET, Queue, receipts

# A configuration change reaches every replica within GATEWAY_QUEUE_CONFIG_REFRESH_S.
REFRESH_S = 2


@pytest.fixture(scope="module")
def replicas(pulsar_cluster: PulsarCluster) -> Iterator[list[Gateway]]:
    gateways = [
        start_gateway(pulsar_cluster, receipt_secret=SECRET, queue_config_refresh_s=str(REFRESH_S))
        for _ in range(2)
    ]
    try:
        yield gateways
    finally:
        for gateway in gateways:
            stop_gateway(gateway)


class Declared(Queue):
    """A queue on a topic of a fresh tenant, whose subscription is declared `how`."""

    def __init__(self, replicas: list[Gateway], how: str) -> None:
        tenant = f"q-{uuid.uuid4().hex[:8]}"
        super().__init__(replicas, f"{tenant}/jobs/tasks")
        self.how = how
        self.tenant = tenant
        self._documents: list[dict[str, Any]] = [
            {"kind": "Tenant", "metadata": {"name": tenant}, "spec": {"clusters": ["east"]}},
            {"kind": "Namespace", "metadata": {"name": f"{tenant}/jobs"}},
            {"kind": "Topic", "metadata": {"name": self.topic}},
        ]
        self._apply([])

    def declare(self, **spec: Any) -> None:
        """Create or change the subscription `work`, by manifest or by PUT."""
        spec.setdefault("initial_position", "earliest")
        if self.how == "http":
            response = self.http.put(self.url(0), json=spec)
            assert response.status_code in (200, 201), response.text
            return
        metadata = {"name": "work", "topic": self.topic}
        self._apply([{"kind": "Subscription", "metadata": metadata, "spec": spec}])

    def _apply(self, extra: list[dict[str, Any]]) -> None:
        documents = [{"apiVersion": "broker-gateway/v1", **d} for d in self._documents + extra]
        response = self.http.post(
            f"{self.replicas[0].url}/v1/manifests/apply",
            content=yaml.safe_dump_all(documents),
            headers={"Content-Type": "application/yaml"},
        )
        assert response.status_code == 200, response.text

    def dead_letter_backlog(self, expected: int, within_s: float = 15) -> int:
        deadline = time.monotonic() + within_s
        while True:
            backlog: int = self.stats()["dead_letter_backlog"]
            if backlog == expected or time.monotonic() > deadline:
                return backlog
            time.sleep(0.2)


@pytest.fixture(params=["http", "manifest"])
def declared(request: pytest.FixtureRequest, replicas: list[Gateway]) -> Iterator[Declared]:
    queue = Declared(replicas, request.param)
    try:
        yield queue
    finally:
        queue.http.close()


def test_dead_letters_are_counted_and_redriven_however_the_subscription_was_declared(
    declared: Declared,
) -> None:
    declared.declare(ack_deadline_ms=60_000, max_deliveries=2)
    declared.publish([{"value": "poison", "key": "p-1"}])
    for replica in range(2):
        [message] = declared.pull(replica, wait_ms=10_000)
        declared.settle(replica + 1, "nack", [message["receipt"]], delay_ms=0)
    assert declared.dead_letter_backlog(1) == 1

    moved = declared.http.post(declared.url(1, "/dead-letters/redrive"), json={})
    assert moved.status_code == 200, moved.text
    assert moved.json() == {"moved": 1}
    [back] = declared.pull(0, wait_ms=10_000)
    assert back["value"] == "poison" and back["delivery_attempt"] == 1
    assert declared.dead_letter_backlog(0) == 0


def test_a_configuration_change_reaches_a_busy_replica(declared: Declared) -> None:
    """Replica 1 keeps pulling all along, so its consumer never closes by itself."""
    declared.declare(ack_deadline_ms=60_000)
    stop = threading.Event()
    busy = threading.Thread(
        target=lambda: [declared.pull(1, wait_ms=100) for _ in iter(stop.is_set, True)]
    )
    busy.start()
    try:
        time.sleep(0.5)
        declared.declare(ack_deadline_ms=1_000)
        time.sleep(REFRESH_S + 1)  # the documented bound, and a pull's worth more
    finally:
        stop.set()
        busy.join()
    declared.publish([{"value": "slow"}])
    [first] = declared.pull(1, wait_ms=10_000)
    assert first["delivery_attempt"] == 1
    started = time.monotonic()
    # Not acked: with the new deadline it comes back within a second or so, not a minute.
    [again] = declared.pull(0, wait_ms=10_000)
    assert again["value"] == "slow" and again["delivery_attempt"] == 2
    assert time.monotonic() - started < 8
    assert declared.settle(0, "ack", receipts([again]))["succeeded"] == 1


def test_a_pull_that_dead_letters_while_its_consumer_is_handed_back_ends_cleanly(
    pulsar_cluster: PulsarCluster, admin: httpx.Client, tmp_path: Path
) -> None:
    """A pull suspended moving a message to the dead letters, while the replica hands its
    consumer back (a very short GATEWAY_QUEUE_HANDOFF_S), used to hit an assert: a 500."""
    log = tmp_path / "gateway.log"
    gateway = start_gateway(
        pulsar_cluster,
        log=log,
        receipt_secret=SECRET,
        queue_handoff_s="0.02",
        queue_config_refresh_s="0.1",
    )
    queue = Queue([gateway], f"public/default/q-{uuid.uuid4().hex[:8]}")
    try:
        queue.configure(ack_deadline_ms=60_000, max_deliveries=5)
        queue.publish([{"value": "poison"}])
        for attempt in (1, 2):
            [message] = queue.pull(0, wait_ms=10_000)
            assert message["delivery_attempt"] == attempt
            queue.settle(0, "nack", [message["receipt"]], delay_ms=0)
        # Lowered behind the gateway's back (Pulsar's own admin): its consumer stays, and
        # takes the change up. The third delivery is over the limit: the pull moves it.
        properties = f"/persistent/{queue.topic}/subscription/work/properties"
        lowered = {**admin.get(properties).json(), "broker-gateway.max_deliveries": "1"}
        admin.put(properties, json=lowered).raise_for_status()
        time.sleep(0.5)
        response = queue.http.post(queue.url(0, "/pull"), json={"wait_ms": 2000})
        assert response.status_code == 200, response.text
        assert response.json() == {"messages": []}
        assert queue.stats()["dead_letter_backlog"] == 1
    finally:
        queue.http.close()
        stop_gateway(gateway)
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("handoff_s", ["1", "0.05"])
def test_key_shared_delivers_each_key_in_publish_order_across_replicas_and_handoffs(
    pulsar_cluster: PulsarCluster, handoff_s: str
) -> None:
    """Workers on two replicas, which hand their consumers back after GATEWAY_QUEUE_HANDOFF_S
    without a pull: each key's messages are first delivered in the order they were
    published."""
    gateways = [
        start_gateway(pulsar_cluster, receipt_secret=SECRET, queue_handoff_s=handoff_s)
        for _ in range(2)
    ]
    queue = Queue(gateways, f"public/default/q-{uuid.uuid4().hex[:8]}")
    try:
        queue.configure(type="key_shared", ack_deadline_ms=30_000)
        keys = [f"order-{k}" for k in range(6)]
        count = 300
        queue.publish([{"value": n, "key": keys[n % 6]} for n in range(count)])
        firsts: dict[str, list[int]] = {key: [] for key in keys}
        seen: set[int] = set()
        lock = threading.Lock()
        give_up = time.monotonic() + 90

        def work(turn: int) -> None:
            while len(seen) < count and time.monotonic() < give_up:
                messages = queue.pull(turn, max_messages=5, wait_ms=200)
                turn += 1
                with lock:
                    for m in messages:
                        if m["value"] not in seen:
                            seen.add(m["value"])
                            firsts[m["key"]].append(m["value"])
                if messages:
                    time.sleep(0.06)  # longer than the short handoff: consumers rotate
                    queue.settle(turn, "ack", receipts(messages))

        workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        queue.http.close()
        for gateway in gateways:
            stop_gateway(gateway)
    assert len(seen) == count
    for key, values in firsts.items():
        assert values == sorted(values), f"{key} out of order: {values}"
