"""The whole history of a fault run, and the checks made on it afterwards.

Every request the load makes is recorded with its answer (or the lack of one); at the end
everything the topic holds is read back with a native reader. The checks are pure
functions of the two, so they are unit-tested without a broker (tests/unit).
"""

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

# How a writer makes its retries safe: an Idempotency-Key, `producer` + `sequence_id`
# (broker deduplication), or nothing (a retry after an unclear answer may duplicate).
KEYED_MODES = frozenset({"idempotent", "sequenced"})
# What a fault may answer: unavailable or timed out, with Retry-After.
FAULT_STATUSES = frozenset({503, 504})
# See Fault.aftermath_ends: the queue hand-off time, and a second for the pull.
AFTERMATH_S = 2.0
# The 4xx the load may meet: a shed request, and a retry under an Idempotency-Key while
# the attempt before it (on a replica that died) may still be publishing.
EXPECTED_4XX = frozenset({"rate_limited", "idempotency_key_in_use"})


@dataclass(frozen=True)
class Request:
    """One HTTP request and its answer; `status` None when no answer came (refused, reset)."""

    operation: str  # publish, pull, ack, readyz, ...
    replica: str
    started: float
    ended: float
    status: int | None
    code: str | None = None
    retry_after: str | None = None
    cluster: str | None = None  # a publish's Pulsar-Cluster header: where it was persisted


@dataclass(frozen=True)
class Publish:
    """One attempt to publish message `seq` of `writer` (one key per writer)."""

    writer: str
    mode: str
    seq: int
    request: Request


@dataclass(frozen=True)
class Lease:
    """A message handed to a worker by a pull: until `deadline`, or until settled."""

    worker: str
    replica: str  # the replica that leased it
    message: tuple[str, int]  # (writer, seq): a plain retry may have stored two copies
    message_id: str  # which copy: Pulsar's id
    receipt: str
    pulled_at: float
    deadline: float


@dataclass(frozen=True)
class Settle:
    """The answer to acking one receipt: None when it was acked, else the failure code."""

    receipt: str
    at: float
    failed: str | None


@dataclass
class History:
    """Thread-safe record of a run. Times are time.monotonic()."""

    requests: list[Request] = field(default_factory=list)
    publishes: list[Publish] = field(default_factory=list)
    leases: list[Lease] = field(default_factory=list)
    settles: list[Settle] = field(default_factory=list)
    faults: list["Fault"] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def request(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def publish(self, publish: Publish) -> None:
        with self._lock:
            self.publishes.append(publish)
            self.requests.append(publish.request)

    def lease(self, lease: Lease) -> None:
        with self._lock:
            self.leases.append(lease)

    def settle(self, settle: Settle) -> None:
        with self._lock:
            self.settles.append(settle)

    def fault(self, fault: "Fault") -> None:
        with self._lock:
            self.faults.append(fault)


@dataclass(frozen=True)
class Fault:
    kind: str
    started: float
    healed: float
    replica: str | None = None  # the replica it struck, or None: the broker or the network

    def ends_leases_of(self, replica: str) -> bool:
        """A lease ends when its replica stops, or when the replica's consumer loses the
        broker: Pulsar then redelivers what that consumer held, as after a deadline."""
        return self.replica is None or self.replica == replica

    @property
    def aftermath_ends(self) -> float:
        """Until when leases taken may be ended by it: a message a replica had taken from
        Pulsar but not yet handed out when its connection broke may still be handed out
        in the second after (GATEWAY_QUEUE_HANDOFF_S), though Pulsar gave it to another."""
        return self.healed + (AFTERMATH_S if self.replica is None else 0.0)


def now() -> float:
    return time.monotonic()


@dataclass(frozen=True)
class Stored:
    """A message as the topic holds it, in topic order."""

    writer: str
    seq: int


@dataclass
class Findings:
    """What the history shows; the fault suite asserts on it and reports it."""

    requests: int = 0
    acknowledged: int = 0  # distinct messages whose publish got a 2xx
    lost: list[tuple[str, int]] = field(default_factory=list)
    duplicated_keyed: int = 0  # extra copies where the writer used a key: must be 0
    keyed_duplicates: list[str] = field(default_factory=list)
    duplicated_unkeyed: int = 0  # extra copies where it did not: counted, reported
    out_of_order: list[str] = field(default_factory=list)
    bad_errors: list[str] = field(default_factory=list)  # 5xx other than 503/504, or no Retry-After
    refused: int = 0  # requests with no answer (a replica that is gone)
    answers: Counter[str] = field(default_factory=Counter)  # "operation status code"
    fault_answers: int = 0  # 503/504 answers
    recovery_s: list[float] = field(default_factory=list)  # per fault: heal to first 2xx
    # Work queue
    unacked: list[tuple[str, int]] = field(default_factory=list)
    redeliveries: int = 0
    concurrent_leases: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "acknowledged": self.acknowledged,
            "lost": len(self.lost),
            "duplicated_keyed": self.duplicated_keyed,
            "duplicated_unkeyed": self.duplicated_unkeyed,
            "out_of_order": len(self.out_of_order),
            "bad_5xx": len(self.bad_errors),
            "refused": self.refused,
            "fault_answers": self.fault_answers,
            "recovery_s_max": round(max(self.recovery_s, default=0.0), 1),
            "unacked": len(self.unacked),
            "redeliveries": self.redeliveries,
            "concurrent_leases": len(self.concurrent_leases),
        }


def check_answers(history: History, findings: Findings) -> None:
    """Every answer is a success, a 4xx the load expects, or 503/504 with Retry-After."""
    findings.requests = len(history.requests)
    for r in history.requests:
        findings.answers[f"{r.operation} {r.status or 'no answer'} {r.code or ''}".strip()] += 1
        if r.status is None:
            findings.refused += 1
        elif r.status in FAULT_STATUSES:
            findings.fault_answers += 1
            if not r.retry_after:
                findings.bad_errors.append(f"{r.operation} on {r.replica}: {r.status} {r.code}")
        elif r.status >= 500 or (r.status >= 400 and r.code not in EXPECTED_4XX):
            findings.bad_errors.append(f"{r.operation} on {r.replica}: {r.status} {r.code}")


def check_topic(history: History, stored: list[Stored], findings: Findings) -> None:
    """Nothing acknowledged lost; duplicates by mode; per-writer (per-key) order kept."""
    modes = {p.writer: p.mode for p in history.publishes}
    acknowledged = {(p.writer, p.seq) for p in history.publishes if _is_2xx(p.request.status)}
    findings.acknowledged = len(acknowledged)
    copies = Counter((s.writer, s.seq) for s in stored)
    findings.lost = sorted(acknowledged - set(copies))
    for (writer, seq), count in copies.items():
        if modes.get(writer) in KEYED_MODES and count > 1:
            findings.duplicated_keyed += count - 1
            findings.keyed_duplicates.append(f"{writer} ({modes[writer]}) {seq}: {count} copies")
        else:
            findings.duplicated_unkeyed += count - 1
    # A writer publishes its messages one after another under one key, so their first
    # copies must be stored in the order they were published.
    last: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    for s in stored:
        if (s.writer, s.seq) in seen:
            continue
        seen.add((s.writer, s.seq))
        if s.seq < last.get(s.writer, -1):
            findings.out_of_order.append(f"{s.writer}: {s.seq} stored after {last[s.writer]}")
        last[s.writer] = max(s.seq, last.get(s.writer, -1))


def check_recovery(history: History, findings: Findings) -> None:
    """Per fault: from its heal until every replica has served a publish started after it
    (the slowest replica's first success)."""
    successes = sorted(
        (p.request.started, p.request.ended, p.request.replica)
        for p in history.publishes
        if _is_2xx(p.request.status)
    )
    replicas = {replica for _, _, replica in successes}
    for fault in history.faults:
        firsts: dict[str, float] = {}
        for started, ended, replica in successes:
            if started >= fault.healed and replica not in firsts:
                firsts[replica] = ended
        if firsts.keys() != replicas:
            findings.recovery_s.append(float("inf"))
        else:
            findings.recovery_s.append(max(0.0, max(firsts.values()) - fault.healed))


def check_queue(history: History, published: set[tuple[str, int]], findings: Findings) -> None:
    """Every published message acked by a worker; redeliveries counted; no message leased
    to two workers at once unless the first lease had ended: its deadline passed, its ack
    was refused (the gateway told the worker it no longer held the message), or a fault
    ended it (see Fault.ends_leases_of)."""
    settled = {s.receipt: s for s in history.settles}
    acked = {
        lease.message
        for lease in history.leases
        if lease.receipt in settled and settled[lease.receipt].failed is None
    }
    findings.unacked = sorted(published - acked)
    # One Pulsar message at a time: two copies of one (writer, seq) are two messages.
    by_message: dict[str, list[Lease]] = defaultdict(list)
    for lease in history.leases:
        by_message[lease.message_id].append(lease)
    for leases in by_message.values():
        message = leases[0].message
        findings.redeliveries += len(leases) - 1
        leases.sort(key=lambda lease: lease.pulled_at)
        for i, first in enumerate(leases):
            settle = settled.get(first.receipt)
            if settle is None or settle.failed is not None:
                continue  # never held to the end, or told it had lost the lease
            for later in leases[i + 1 :]:
                overlaps = first.pulled_at < later.pulled_at < min(settle.at, first.deadline)
                ended = any(
                    fault.ends_leases_of(first.replica)
                    and first.pulled_at < fault.aftermath_ends
                    and fault.started < later.pulled_at
                    for fault in history.faults
                )
                if overlaps and not ended and later.worker != first.worker:
                    t0 = min((r.started for r in history.requests), default=0.0)
                    faults = ", ".join(
                        f"{f.kind} {f.started - t0:.1f}-{f.healed - t0:.1f}" for f in history.faults
                    )
                    findings.concurrent_leases.append(
                        f"{message}: {later.worker} pulled it at {later.pulled_at - t0:.1f} s "
                        f"from {later.replica} while {first.worker} held it (pulled at "
                        f"{first.pulled_at - t0:.1f} s from {first.replica}, acked at "
                        f"{settle.at - t0:.1f} s); faults: {faults}"
                    )


def _is_2xx(status: int | None) -> bool:
    return status is not None and 200 <= status < 300
