"""Work queues through two gateway replicas: pull on one, settle on the other."""

import base64
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import (
    Gateway,
    PulsarCluster,
    bearer,
    start_gateway,
    stop_gateway,
    token,
)

SECRET = "test-receipt-secret"


@pytest.fixture(scope="module")
def replicas(pulsar_cluster: PulsarCluster) -> Iterator[list[Gateway]]:
    gateways = [start_gateway(pulsar_cluster, receipt_secret=SECRET) for _ in range(2)]
    try:
        yield gateways
    finally:
        for gateway in gateways:
            stop_gateway(gateway)


class Queue:
    """One subscription, reached through any replica."""

    def __init__(self, replicas: list[Gateway], topic: str, subscription: str = "work") -> None:
        self.replicas = replicas
        self.topic = topic
        self.path = f"/v1/topics/{topic}/subscriptions/{subscription}"
        # One pooled client: workers make hundreds of calls.
        self.http = httpx.Client(
            timeout=60, limits=httpx.Limits(max_connections=16), headers=bearer()
        )

    def url(self, replica: int, suffix: str = "") -> str:
        return f"{self.replicas[replica % len(self.replicas)].url}{self.path}{suffix}"

    def configure(self, **config: Any) -> httpx.Response:
        config.setdefault("initial_position", "earliest")
        return self.http.put(self.url(0), json=config)

    def publish(self, messages: list[dict[str, Any]]) -> None:
        response = self.http.post(
            f"{self.replicas[0].url}/v1/topics/{self.topic}/messages",
            json={"messages": messages},
        )
        assert response.status_code == 200, response.text

    def pull(
        self, replica: int, max_messages: int = 10, wait_ms: int = 0, **extra: Any
    ) -> list[dict[str, Any]]:
        response = self.http.post(
            self.url(replica, "/pull"),
            json={"max_messages": max_messages, "wait_ms": wait_ms, **extra},
        )
        assert response.status_code == 200, response.text
        messages: list[dict[str, Any]] = response.json()["messages"]
        return messages

    def settle(self, replica: int, op: str, receipts: list[str], **extra: Any) -> dict[str, Any]:
        response = self.http.post(self.url(replica, f"/{op}"), json={"receipts": receipts, **extra})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def stats(self) -> dict[str, Any]:
        response = self.http.get(self.url(1))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
def queue(replicas: list[Gateway], topic: str) -> Iterator[Queue]:
    queue = Queue(replicas, topic)
    try:
        yield queue
    finally:
        queue.http.close()


def receipts(messages: list[dict[str, Any]]) -> list[str]:
    return [m["receipt"] for m in messages]


def run_workers(
    queue: Queue,
    max_messages: int,
    handle: Callable[[list[dict[str, Any]]], int],
    expected: int,
    workers: int = 4,
    deadline_s: float = 90,
) -> None:
    """Workers that pull through one replica and ack through the other, alternating, until
    `handle` (which sees each batch before its ack, and returns how many distinct messages
    have been seen) reports `expected`, or the deadline passes."""
    give_up = time.monotonic() + deadline_s
    done = threading.Event()

    def work(index: int) -> None:
        turn = index
        while not done.is_set() and time.monotonic() < give_up:
            messages = queue.pull(turn, max_messages=max_messages, wait_ms=300)
            turn += 1
            if not messages:
                continue
            if handle(messages) >= expected:
                done.set()
            result = queue.settle(turn, "ack", receipts(messages))
            assert result == {"succeeded": len(messages), "failed": []}

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_four_workers_alternating_replicas_process_each_message_once(queue: Queue) -> None:
    assert queue.configure(ack_deadline_ms=10_000).status_code == 201
    total = 1000
    queue.publish([{"value": n, "key": f"k{n}"} for n in range(total)])
    processed: Counter[int] = Counter()
    lock = threading.Lock()

    def process(messages: list[dict[str, Any]]) -> int:
        with lock:
            processed.update(m["value"] for m in messages)
            return len(processed)

    run_workers(queue, 25, process, expected=total)
    # A worker may still be pulling when the last message is seen: let its lease settle.
    time.sleep(1)
    assert sorted(processed) == list(range(total))
    assert set(processed.values()) == {1}, "a message was delivered twice"

    # Past the ack deadline, an acked message would have come back: none does.
    time.sleep(11)
    assert queue.pull(0, max_messages=100, wait_ms=1000) == []
    assert queue.pull(1, max_messages=100, wait_ms=1000) == []
    assert queue.stats()["backlog"] == 0


def test_an_unacked_message_comes_back_after_its_deadline_not_before(queue: Queue) -> None:
    queue.configure(ack_deadline_ms=2000)
    queue.publish([{"value": "job"}])
    [first] = queue.pull(0, wait_ms=5000)
    pulled_at = time.monotonic()
    assert first["delivery_attempt"] == 1
    assert queue.pull(1, wait_ms=1000) == []  # still leased
    [again] = queue.pull(1, wait_ms=10_000)
    assert time.monotonic() - pulled_at >= 2.0
    assert again["value"] == "job" and again["delivery_attempt"] == 2, again
    assert queue.settle(0, "ack", [again["receipt"]])["succeeded"] == 1


def test_a_nack_with_delay_comes_back_no_earlier_than_the_delay(queue: Queue) -> None:
    queue.configure(ack_deadline_ms=60_000)
    queue.publish([{"value": "retry me"}])
    [message] = queue.pull(0, wait_ms=5000)
    nacked_at = time.monotonic()
    assert queue.settle(1, "nack", [message["receipt"]], delay_ms=1500)["succeeded"] == 1
    [again] = queue.pull(0, wait_ms=10_000)
    assert time.monotonic() - nacked_at >= 1.5
    assert again["value"] == "retry me" and again["delivery_attempt"] == 2


def test_extend_on_another_replica_keeps_the_lease(queue: Queue) -> None:
    queue.configure(ack_deadline_ms=1500)
    queue.publish([{"value": "long job"}])
    [message] = queue.pull(0, wait_ms=5000)
    extended = queue.settle(1, "extend", [message["receipt"]], ack_deadline_ms=6000)
    assert extended["succeeded"] == 1
    assert queue.pull(1, wait_ms=3000) == []  # past the first deadline, still leased
    assert queue.settle(1, "ack", [message["receipt"]])["succeeded"] == 1
    assert queue.pull(0, wait_ms=5000) == []


def test_a_poison_message_is_dead_lettered_after_max_deliveries_and_redriven_back(
    queue: Queue,
) -> None:
    queue.configure(ack_deadline_ms=60_000, max_deliveries=3)
    queue.publish([{"value": "poison", "key": "p-1", "properties": {"origin": "test"}}])
    attempts = []
    for replica in range(3):
        [message] = queue.pull(replica, wait_ms=10_000)
        attempts.append(message["delivery_attempt"])
        queue.settle(replica + 1, "nack", [message["receipt"]], delay_ms=0)
    assert attempts == [1, 2, 3]
    dlq = f"{queue.topic}-work-DLQ"
    dead_letters = queue.http.get(
        f"{queue.replicas[0].url}/v1/topics/{dlq}/messages",
        params={"wait_ms": 15_000},
        timeout=30,
    ).json()["messages"]
    [dead] = dead_letters
    assert queue.pull(0, wait_ms=1000) == []  # no fourth delivery
    assert dead["value"] == "poison" and dead["key"] == "p-1"
    assert dead["properties"]["origin"] == "test"
    assert dead["properties"]["DELIVERY_COUNT"] == "3"
    assert queue.stats()["dead_letter_backlog"] == 1

    moved = queue.http.post(queue.url(1, "/dead-letters/redrive"), json={}).json()
    assert moved == {"moved": 1}
    [back] = queue.pull(0, wait_ms=10_000)
    assert back["value"] == "poison" and back["delivery_attempt"] == 1
    assert queue.stats()["dead_letter_backlog"] == 0


def test_key_shared_never_leases_two_messages_of_one_key_at_once(queue: Queue) -> None:
    queue.configure(type="key_shared", ack_deadline_ms=30_000)
    keys = [f"customer-{k}" for k in range(5)]
    queue.publish([{"value": n, "key": keys[n % 5]} for n in range(60)])
    outstanding: set[str] = set()
    seen: list[int] = []
    violations: list[str] = []
    lock = threading.Lock()

    def process(messages: list[dict[str, Any]]) -> int:
        with lock:
            for m in messages:
                if m["key"] in outstanding:
                    violations.append(m["key"])
                outstanding.add(m["key"])
                seen.append(m["value"])
        time.sleep(0.01)
        with lock:  # released before the ack: the gateway may lease the key again after it
            for m in messages:
                outstanding.discard(m["key"])
            return len(set(seen))

    run_workers(queue, 10, process, expected=60)
    assert violations == []
    assert sorted(seen) == list(range(60))


def test_a_replica_killed_with_leases_out_loses_nothing(
    queue: Queue, pulsar_cluster: PulsarCluster
) -> None:
    queue.configure(ack_deadline_ms=600_000)
    queue.publish([{"value": n} for n in range(5)])
    doomed = start_gateway(pulsar_cluster, receipt_secret=SECRET)
    through_doomed = Queue([doomed], queue.topic)
    leased = through_doomed.pull(0, max_messages=5, wait_ms=5000)
    through_doomed.http.close()
    assert sorted(m["value"] for m in leased) == list(range(5))
    os.kill(doomed.process.pid, signal.SIGKILL)
    doomed.process.wait()

    redelivered: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(redelivered) < 5 and time.monotonic() < deadline:
        redelivered += queue.pull(len(redelivered), max_messages=5, wait_ms=2000)
    assert sorted(m["value"] for m in redelivered) == list(range(5))
    assert queue.settle(0, "ack", receipts(redelivered))["succeeded"] == 5


def test_forged_edited_and_foreign_receipts_are_invalid(queue: Queue) -> None:
    queue.configure()
    queue.publish([{"value": 1}])
    [message] = queue.pull(0, wait_ms=5000)
    receipt = message["receipt"]
    raw = bytearray(base64.urlsafe_b64decode(receipt + "=" * (-len(receipt) % 4)))
    raw[5] ^= 1
    edited = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    other = Queue(queue.replicas, queue.topic, "another")
    other.configure()

    assert queue.settle(1, "ack", ["not-a-receipt", edited]) == {
        "succeeded": 0,
        "failed": [
            {"receipt": "not-a-receipt", "code": "invalid_receipt"},
            {"receipt": edited, "code": "invalid_receipt"},
        ],
    }
    foreign = other.settle(1, "ack", [receipt])
    other.http.close()
    assert foreign["failed"] == [{"receipt": receipt, "code": "invalid_receipt"}]
    assert queue.settle(1, "ack", [receipt])["succeeded"] == 1
    assert queue.settle(0, "ack", [receipt])["succeeded"] == 1  # acking twice is harmless


def test_pull_on_a_missing_subscription_is_404(queue: Queue) -> None:
    queue.publish([{"value": 1}])
    response = queue.http.post(queue.url(0, "/pull"), json={})
    assert response.status_code == 404
    assert response.json()["code"] == "subscription_not_found"


@pytest.mark.parametrize(
    ("op", "body", "headers"),
    [
        ("pull", {"max_messages": 1001}, {}),
        ("pull", {"max_messages": 0}, {}),
        ("pull", {"wait_ms": -1}, {}),
        ("pull", {"ack_deadline_ms": 99}, {}),
        ("pull", {"surprise": 1}, {}),
        ("pull", b"{not json", {"content-type": "application/json"}),
        ("pull", b'{"max_messages": 1}', {"content-type": "text/plain"}),
        ("ack", {"receipts": []}, {}),
        ("ack", {}, {}),
        ("ack", {"receipts": "one"}, {}),
        ("ack", b"", {"content-type": "application/json"}),
    ],
)
def test_a_bad_pull_or_ack_is_422_invalid_request(
    queue: Queue, op: str, body: dict[str, Any] | bytes, headers: dict[str, str]
) -> None:
    queue.configure()
    content = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = queue.http.post(queue.url(0, f"/{op}"), headers=headers, **content)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"


@pytest.mark.parametrize("op", ["pull", "ack"])
def test_pull_and_ack_check_the_caller_then_the_subscription_name(queue: Queue, op: str) -> None:
    body = {"receipts": ["x"]} if op == "ack" else {}
    url = queue.url(0, f"/{op}")
    anonymous = httpx.post(url, json=body)
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "unauthenticated"
    publisher = httpx.post(url, json=body, headers=bearer(token(scopes=["publish"])))
    assert publisher.status_code == 403
    bad_name = queue.url(0, f"/{op}").replace("/subscriptions/work/", "/subscriptions/a%20b/")
    assert httpx.post(bad_name, json=body).status_code == 401  # the caller comes first
    named = queue.http.post(bad_name, json=body)
    assert named.status_code == 422
    assert named.json()["code"] == "invalid_request"


def test_configure_is_idempotent_and_get_reports_config_and_stats(queue: Queue) -> None:
    created = queue.configure(type="key_shared", ack_deadline_ms=5000, max_deliveries=4)
    assert created.status_code == 201
    again = queue.configure(type="key_shared", ack_deadline_ms=5000, max_deliveries=4)
    assert again.status_code == 200 and again.json() == created.json()
    # Distinct keys: one entry each (the backlog counts entries; a batch counts once).
    queue.publish([{"value": n, "key": f"k{n}"} for n in range(3)])
    queue.pull(1, max_messages=1, wait_ms=5000)
    stats = queue.stats()
    assert stats["type"] == "key_shared" and stats["max_deliveries"] == 4
    assert stats["backlog"] == 3 and stats["unacked"] >= 1
    assert stats["oldest_unacked_age_ms"] >= 0 and stats["consumers"] >= 1
    assert stats["dead_letter_backlog"] == 0
    assert queue.http.delete(queue.url(0)).status_code == 204
    assert queue.http.get(queue.url(1)).json()["code"] == "subscription_not_found"


def test_seek_to_earliest_replays_acked_messages(queue: Queue) -> None:
    queue.configure()
    queue.publish([{"value": n} for n in range(3)])
    first = queue.pull(0, max_messages=3, wait_ms=5000)
    queue.settle(1, "ack", receipts(first))
    seek = queue.http.post(queue.url(1, "/seek"), json={"position": "earliest"})
    assert seek.status_code == 204
    replayed: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while len(replayed) < 3 and time.monotonic() < deadline:
        replayed += queue.pull(0, max_messages=3, wait_ms=2000)
    assert sorted(m["value"] for m in replayed) == [0, 1, 2]


def test_a_pull_waiting_while_another_replica_seeks_ends_without_error(queue: Queue) -> None:
    queue.configure()
    assert queue.pull(0, wait_ms=0) == []  # replica 0 now has a consumer
    waiting: list[httpx.Response] = []
    pull = threading.Thread(
        target=lambda: waiting.append(
            queue.http.post(queue.url(0, "/pull"), json={"max_messages": 3, "wait_ms": 8000})
        )
    )
    pull.start()
    time.sleep(1)  # the pull waits on replica 0's consumer
    # The seek closes every replica's consumer, replica 0's under the waiting pull.
    seek = queue.http.post(queue.url(1, "/seek"), json={"position": "earliest"})
    assert seek.status_code == 204
    pull.join(timeout=30)
    assert waiting[0].status_code == 200, waiting[0].text
    assert waiting[0].json() == {"messages": []}
    queue.publish([{"value": 1}])
    replayed: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not replayed and time.monotonic() < deadline:
        replayed = queue.pull(0, wait_ms=2000)
    assert [m["value"] for m in replayed] == [1]


def test_a_slow_worker_leaves_messages_in_pulsar_not_in_the_gateway(queue: Queue) -> None:
    queue.configure()
    queue.publish([{"value": n, "key": f"k{n}"} for n in range(1000)])
    assert len(queue.pull(0, max_messages=1, wait_ms=5000)) == 1
    time.sleep(1)
    stats = queue.stats()
    # Dispatched to the gateway: the message pulled, plus at most the one entry that
    # waits in the pulling replica's consumer (Pulsar's smallest receiver queue).
    assert stats["unacked"] <= 2, stats
    assert stats["backlog"] == 1000
