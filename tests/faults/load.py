"""A bounded load through the gateway replicas, recorded request by request.

Writers each own one key and publish its messages one after another (so their order is
checkable), retrying a message until it is acknowledged: with an Idempotency-Key, with
`producer` + `sequence_id`, or plainly. They go round the replicas, as behind a load
balancer, except a `producer` writer, which stays on one until it fails. Workers pull the
same messages from a shared subscription and ack them, half of the acks through another
replica than the pull's. A poller watches /readyz. Everything goes into a History.
"""

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from tests.faults.history import History, Lease, Publish, Request, Settle, now
from tests.integration.conftest import bearer

MODES = ("idempotent", "sequenced", "plain")


@dataclass(frozen=True)
class Endpoint:
    """A gateway replica as the load sees it: a name and an address."""

    name: str
    url: str


class Load:
    """Writers, workers and a readiness poller, running until stop()."""

    def __init__(
        self,
        history: History,
        replicas: Sequence[Endpoint],
        topic: str,
        *,
        writers: int = 6,
        workers: int = 3,
        subscription: str | None = None,
        pause_s: float = 0.02,
        timeout_s: float = 45.0,
    ) -> None:
        self.history = history
        self.replicas = list(replicas)
        self.topic = topic
        self.subscription = subscription
        self.pause_s = pause_s
        self.timeout_s = timeout_s
        self.run_id = uuid.uuid4().hex[:6]
        self._stop_writing = threading.Event()
        self._stop_working = threading.Event()
        self._threads = [
            threading.Thread(target=self._write, args=(f"w{i}", MODES[i % len(MODES)], i))
            for i in range(writers)
        ]
        if subscription is not None:
            self._workers = [
                threading.Thread(target=self._work, args=(f"k{i}", i)) for i in range(workers)
            ]
        else:
            self._workers = []
        self._poller = threading.Thread(target=self._poll_readiness)

    def start(self) -> "Load":
        for thread in [*self._threads, *self._workers, self._poller]:
            thread.start()
        return self

    def stop_writing(self) -> None:
        self._stop_writing.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 15)

    def stop(self) -> None:
        self.stop_writing()
        self._stop_working.set()
        for thread in [*self._workers, self._poller]:
            thread.join(timeout=self.timeout_s + 15)

    # --- writers ---------------------------------------------------------------------------

    def _write(self, writer: str, mode: str, index: int) -> None:
        replicas = itertools.cycle(self._rotated(index))
        replica = next(replicas)
        path = f"/v1/topics/{self.topic}/messages"
        with httpx.Client(headers=bearer(), timeout=self.timeout_s) as client:
            for seq in itertools.count():
                if self._stop_writing.is_set():
                    return
                message: dict[str, Any] = {"value": {"writer": writer, "seq": seq}, "key": writer}
                body: dict[str, Any] = {"messages": [message]}
                headers = {}
                if mode == "idempotent":
                    headers["Idempotency-Key"] = f"{self.run_id}-{writer}-{seq}"
                elif mode == "sequenced":
                    body["producer"] = f"faults-{self.run_id}-{writer}"
                    message["sequence_id"] = seq
                while True:  # until this message is acknowledged
                    request = self._send(
                        client, replica, "publish", "POST", path, json=body, headers=headers
                    )
                    self.history.publish(Publish(writer, mode, seq, request))
                    if request.status is not None and 200 <= request.status < 300:
                        break
                    if request.status is None or request.code == "shutting_down":
                        replica = next(replicas)  # that replica is gone or going
                    if self._stop_writing.is_set():
                        return
                    time.sleep(min(float(request.retry_after or 0.25), 1.0))
                time.sleep(self.pause_s)
                if mode != "sequenced":  # its named producer lives on one replica at a time
                    replica = next(replicas)

    # --- workers ---------------------------------------------------------------------------

    def _work(self, worker: str, index: int) -> None:
        assert self.subscription is not None
        replicas = itertools.cycle(self._rotated(index))
        replica = next(replicas)
        queue = f"/v1/topics/{self.topic}/subscriptions/{self.subscription}"
        deadline_ms = 10_000
        with httpx.Client(headers=bearer(), timeout=self.timeout_s) as client:
            acks = 0
            while not self._stop_working.is_set():
                pull = {"max_messages": 20, "wait_ms": 500, "ack_deadline_ms": deadline_ms}
                response: dict[str, Any] = {}
                request = self._send(
                    client, replica, "pull", "POST", f"{queue}/pull", json=pull, into=response
                )
                if request.status != 200:
                    if request.status is None or request.code == "shutting_down":
                        replica = next(replicas)
                    time.sleep(0.25)
                    continue
                messages = response["body"]["messages"]
                for m in messages:
                    value = m["value"]
                    self.history.lease(
                        Lease(
                            worker,
                            replica.name,
                            (value["writer"], value["seq"]),
                            m["message_id"],
                            m["receipt"],
                            request.ended,
                            request.started + deadline_ms / 1000,
                        )
                    )
                if not messages:
                    continue
                receipts = [m["receipt"] for m in messages]
                acks += 1
                # Half the acks go through another replica than the one that leased them.
                target = replica if acks % 2 else next(replicas)
                self._ack(client, target, queue, receipts)

    def _ack(
        self, client: httpx.Client, replica: Endpoint, queue: str, receipts: list[str]
    ) -> None:
        for _ in range(20):  # an ack without an answer is sent again: acking twice is harmless
            response: dict[str, Any] = {}
            request = self._send(
                client,
                replica,
                "ack",
                "POST",
                f"{queue}/ack",
                json={"receipts": receipts},
                into=response,
            )
            if request.status == 200:
                failed = {f["receipt"]: f["code"] for f in response["body"]["failed"]}
                for receipt in receipts:
                    self.history.settle(Settle(receipt, request.ended, failed.get(receipt)))
                return
            replica = self._other(replica)
            time.sleep(0.25)

    # --- readiness -------------------------------------------------------------------------

    def _poll_readiness(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop_working.is_set():
                for replica in self.replicas:
                    self._send(client, replica, "readyz", "GET", "/readyz")
                time.sleep(0.25)

    # --- plumbing --------------------------------------------------------------------------

    def _send(
        self,
        client: httpx.Client,
        replica: Endpoint,
        operation: str,
        method: str,
        path: str,
        *,
        into: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Request:
        started = now()
        try:
            response = client.request(method, replica.url + path, **kwargs)
        except httpx.TransportError:
            request = Request(operation, replica.name, started, now(), None)
        else:
            body = response.json() if response.content else {}
            if into is not None:
                into["body"] = body
            request = Request(
                operation,
                replica.name,
                started,
                now(),
                response.status_code,
                body.get("code") if response.status_code >= 400 else None,
                response.headers.get("retry-after"),
                response.headers.get("pulsar-cluster"),
            )
        if operation != "publish":  # publishes are recorded with their message
            self.history.request(request)
        return request

    def _rotated(self, index: int) -> list[Endpoint]:
        k = index % len(self.replicas)
        return self.replicas[k:] + self.replicas[:k]

    def _other(self, replica: Endpoint) -> Endpoint:
        others = [r for r in self.replicas if r != replica]
        return others[0] if others else replica


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `condition` until true; the seconds it took. Raises AssertionError on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)
    return time.monotonic() - started
