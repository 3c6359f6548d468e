"""The lease table: which pulled messages are out, until when, and which wait for their key.

Pure bookkeeping: no Pulsar, no event loop. Messages and the consumers they came through
(their "holders") are opaque values here; time comes from an injected clock, so the unit
tests drive every transition of the lifecycle (see the package's docstring) by hand.
"""

import collections
import heapq
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

MessageId = bytes  # pulsar MessageId.serialize()
H = TypeVar("H", bound=Hashable)  # a holder: the consumer a message came through


class Admission(Enum):
    LEASED = "leased"  # out to a worker until its deadline
    HELD = "held"  # key_shared: its key is leased; waits here, in order, for its turn
    DUPLICATE = "duplicate"  # a redelivery of a message a worker holds now


@dataclass(slots=True)
class Lease(Generic[H]):
    message_id: MessageId
    message: Any
    holder: H  # the consumer it came through, which must ack or nack it
    key: str | None  # its ordering key while it keeps that key busy (key_shared)
    deadline: float
    nacked: bool = False


@dataclass(order=True, slots=True)
class _Timer:
    deadline: float
    message_id: MessageId = field(compare=False)


@dataclass(slots=True)
class _Holder:
    leases: int = 0
    last_release: float = float("-inf")


class LeaseTable(Generic[H]):
    def __init__(self, *, key_shared: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.key_shared = key_shared
        self._clock = clock
        self._leases: dict[MessageId, Lease[H]] = {}
        self._timers: list[_Timer] = []  # a heap; stale entries are skipped when popped
        self._busy_keys: set[str] = set()
        self._held: collections.deque[tuple[MessageId, H, Any, str | None]] = collections.deque()
        self._held_keys: collections.Counter[str | None] = collections.Counter()
        self._holders: dict[H, _Holder] = collections.defaultdict(_Holder)

    def __len__(self) -> int:
        return len(self._leases)

    def get(self, message_id: MessageId) -> Lease[H] | None:
        return self._leases.get(message_id)

    # --- pulled -> leased | held ---------------------------------------------------------

    def admit(
        self, message_id: MessageId, message: Any, holder: H, key: str | None, lease_ms: int
    ) -> Admission:
        """Lease a message just received, unless a worker holds it already, or (key_shared)
        its key is leased or has messages held: then it is held, behind those, until the key
        is free. A key's messages are leased in the order they were admitted."""
        if message_id in self._leases:
            return Admission.DUPLICATE
        key = key if self.key_shared else None
        if key is not None and (key in self._busy_keys or self._held_keys[key]):
            self._held.append((message_id, holder, message, key))
            self._held_keys[key] += 1
            return Admission.HELD
        self._lease(message_id, message, holder, key, lease_ms)
        return Admission.LEASED

    def lease_held(self, lease_ms: int) -> Lease[H] | None:
        """Lease the oldest held message whose key is free now, if there is one."""
        for index, (message_id, holder, message, key) in enumerate(self._held):
            if key not in self._busy_keys:
                del self._held[index]
                self._held_keys[key] -= 1
                return self._lease(message_id, message, holder, key, lease_ms)
        return None

    def drop_held(self, holder: H) -> int:
        """Forget what `holder` holds (it is closing: Pulsar delivers those again)."""
        kept = collections.deque(entry for entry in self._held if entry[1] != holder)
        dropped = len(self._held) - len(kept)
        self._held = kept
        self._held_keys = collections.Counter(key for *_, key in kept)
        return dropped

    # --- leased -> acked | nacked | extended | expired --------------------------------------

    def ack(self, message_id: MessageId) -> Lease[H] | None:
        """End the lease of an acked message; None if it is not leased (any more)."""
        return self._release(message_id)

    def nack(self, message_id: MessageId, delay_ms: int) -> bool:
        """The lease ends in `delay_ms`, as if it expired then. False if not leased, or
        nacked already."""
        lease = self._leases.get(message_id)
        if lease is None or lease.nacked:
            return False
        lease.nacked = True
        self._schedule(lease, self._clock() + delay_ms / 1000)
        return True

    def extend(self, message_id: MessageId, lease_ms: int) -> bool:
        """The deadline moves to `lease_ms` from now. False if not leased, or nacked."""
        lease = self._leases.get(message_id)
        if lease is None or lease.nacked:
            return False
        self._schedule(lease, self._clock() + lease_ms / 1000)
        return True

    def due(self) -> list[Lease[H]]:
        """Leases whose deadline (or nack delay) has passed, taken off the table: each is to
        be delivered again, or dead-lettered if that was its last allowed delivery."""
        now = self._clock()
        expired = []
        while self._timers and self._timers[0].deadline <= now:
            timer = heapq.heappop(self._timers)
            lease = self._leases.get(timer.message_id)
            if lease is not None and lease.deadline == timer.deadline:  # else: a stale timer
                self._release(timer.message_id)
                expired.append(lease)
        return expired

    def next_deadline(self) -> float | None:
        """When `due` has something next, on the clock's scale (a bound: it may be stale)."""
        return self._timers[0].deadline if self._timers else None

    # --- holders -------------------------------------------------------------------------

    def leases_of(self, holder: H) -> int:
        return self._holders[holder].leases if holder in self._holders else 0

    def settled(self, holder: H, for_s: float) -> bool:
        """No lease through `holder`, the last one ended at least `for_s` ago."""
        state = self._holders.get(holder)
        return state is None or (state.leases == 0 and self._clock() - state.last_release >= for_s)

    def forget(self, holder: H) -> None:
        """`holder` is closed: nothing of it stays on the table."""
        self.drop_held(holder)
        self._holders.pop(holder, None)

    # --- internals ---------------------------------------------------------------------

    def _lease(
        self, message_id: MessageId, message: Any, holder: H, key: str | None, ms: int
    ) -> Lease[H]:
        lease: Lease[H] = Lease(message_id, message, holder, key, 0.0)
        self._leases[message_id] = lease
        self._holders[holder].leases += 1
        if key is not None:
            self._busy_keys.add(key)
        self._schedule(lease, self._clock() + ms / 1000)
        return lease

    def _schedule(self, lease: Lease[H], deadline: float) -> None:
        lease.deadline = deadline
        heapq.heappush(self._timers, _Timer(deadline, lease.message_id))

    def _release(self, message_id: MessageId) -> Lease[H] | None:
        lease = self._leases.pop(message_id, None)
        if lease is None:
            return None
        holder = self._holders[lease.holder]
        holder.leases -= 1
        holder.last_release = self._clock()
        if lease.key is not None:
            self._busy_keys.discard(lease.key)
        return lease
