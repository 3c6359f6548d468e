"""One replica's consumers on a work-queue subscription, and the leases it has handed out.

Delivery guarantees, in code:
- A message is acknowledged to Pulsar only when a worker acks its receipt.
- A pulled message is leased until its deadline; if no ack arrives by then it is
  negatively acknowledged, and Pulsar redelivers it to any consumer (on any replica).
- If this replica dies, Pulsar redelivers everything its consumers had not acked.
- Prefetch is as small as Pulsar's client allows: one entry (one message, or one batch)
  per partition waits in this replica's consumer ahead of pulls. A receive whose pull
  stopped waiting is not cancelled: the next pull here claims it, so a message it brings
  is kept, never dropped.
- A message that reached this replica while no pull waited must not sit here while workers
  ask other replicas. After `handoff_s` without a pull, the consumer is replaced: a new one
  opens first (so the subscription never loses all consumers, and Pulsar keeps its
  redelivery counts), and the old one closes once its leases are settled, handing back what
  it still held.
- A message whose last allowed delivery (`max_deliveries`) fails is published to the
  dead-letter topic, then acked, by the replica that leased it.
- On a key_shared subscription at most one message per key is leased at a time; the others
  wait here, in order, until that key's lease ends.
"""

import asyncio
import collections
import heapq
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pulsar
import pulsar.asyncio

from broker_gateway.errors import GatewayError
from broker_gateway.pulsar.bridge import Gathering, callback_for, error_of
from broker_gateway.pulsar.subscriptions import SubscriptionConfig

log = logging.getLogger(__name__)

# How long a pull that already has a message waits for each next one.
_DRAIN_S = 0.01
# A retired consumer closes this long after its last lease ended: the client sends a nack's
# redelivery request a little later, and a close would hand the message back uncounted.
_SETTLE_S = 1.0


class _Receiver:
    """One Pulsar consumer of this replica and the receives sent through it."""

    def __init__(self, consumer: pulsar.asyncio.Consumer) -> None:
        self.consumer = consumer
        self.receives: list[asyncio.Future[Any]] = []
        self.claimed: set[asyncio.Future[Any]] = set()  # a pull waits on these
        self.leases = 0
        self.last_release = 0.0
        self.used = False

    @property
    def holds_unclaimed(self) -> bool:
        return any(f not in self.claimed for f in self.receives)

    def take_arrived(self) -> Any:
        for future in self.receives:
            if future.done() and future not in self.claimed:
                self.receives.remove(future)
                return future.result()
        return None

    def receive(self) -> "asyncio.Future[Any]":
        """An unclaimed pending receive, or a new one, claimed for the caller."""
        unclaimed = [f for f in self.receives if f not in self.claimed]
        if unclaimed:
            future = unclaimed[0]
        else:
            future = asyncio.get_running_loop().create_future()
            self.consumer._consumer.receive_async(callback_for(future))
            self.receives.append(future)
        self.claimed.add(future)
        self.used = True
        return future

    async def close(self) -> None:
        for future in self.receives:
            if future.done() and not future.cancelled():
                future.exception()  # a receive ending with its consumer is expected
            else:
                future.cancel()
        try:
            await self.consumer.close()
        except Exception as exc:
            log.warning("closing consumer on %s failed: %s", self.consumer.topic(), exc)


@dataclass
class Lease:
    message: Any  # _pulsar.Message
    receiver: _Receiver
    deadline: float  # monotonic seconds
    key: str | None
    nacked: bool = False


@dataclass(frozen=True, slots=True)
class Leased:
    message: Any  # _pulsar.Message
    message_id: bytes  # serialized MessageId
    delivery_attempt: int


@dataclass(order=True)
class _Timer:
    deadline: float
    message_id: bytes = field(compare=False)


class QueueConsumer:
    def __init__(
        self,
        subscribe: Callable[[], Awaitable[pulsar.asyncio.Consumer]],
        config: SubscriptionConfig,
        *,
        dead_letter: Callable[[Any, int], Awaitable[None]],
        skip: Callable[[Any], bool],
        handoff_s: float,
    ) -> None:
        """`subscribe()` opens a Pulsar consumer; `dead_letter(message, deliveries)`
        publishes a message delivered `max_deliveries` times; `skip(message)` says it is not
        for this subscription."""
        self._subscribe = subscribe
        self.config = config
        self._dead_letter = dead_letter
        self._skip = skip
        self._handoff_s = handoff_s
        self._current: _Receiver | None = None
        self._retiring: list[_Receiver] = []
        self._leases: dict[bytes, Lease] = {}
        self._held: collections.deque[tuple[_Receiver, Any]] = collections.deque()
        self._busy_keys: set[str] = set()
        self._timers: list[_Timer] = []
        self._wake = asyncio.Event()
        self._expiry: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()
        self._dead_lettering: set[asyncio.Task[None]] = set()
        self.last_used = time.monotonic()

    def start(self) -> None:
        self._expiry = asyncio.create_task(self._expire_forever(), name="lease-expiry")

    @property
    def key_shared(self) -> bool:
        return self.config.type == "key_shared"

    async def pull(self, max_messages: int, wait_s: float, lease_ms: int) -> list[Leased]:
        """Lease up to `max_messages`, waiting up to `wait_s` for the first one."""
        self.last_used = time.monotonic()
        await self._ensure_current()
        leased: list[Leased] = []
        give_up = time.monotonic() + wait_s
        try:
            while len(leased) < max_messages:
                arrival = self._take_held()
                if arrival is None:
                    remaining = _DRAIN_S if leased else give_up - time.monotonic()
                    arrival = await self._receive(max(remaining, 0))
                    if arrival is None:
                        break
                item = await self._admit(*arrival, lease_ms)
                if item is not None:
                    leased.append(item)
        finally:
            self.last_used = time.monotonic()
        return leased

    async def _admit(self, receiver: _Receiver, message: Any, lease_ms: int) -> Leased | None:
        """Lease a received message, or deal with it: duplicate, not ours, dead, key busy."""
        message_id = message.message_id().serialize()
        if message_id in self._leases:
            return None  # a redelivery of what a worker holds now (a batch sibling's nack)
        if self._skip(message):
            await self._ack(receiver, message)
            return None
        attempt = _attempt(message)
        max_deliveries = self.config.max_deliveries
        # Normally moved when its last delivery failed; this catches one delivered more often
        # meanwhile (a replica that died while holding it).
        if max_deliveries is not None and attempt > max_deliveries:
            await self._move_to_dead_letters(receiver, message, attempt - 1)
            return None
        key = _key(message)
        if self.key_shared and key is not None and key in self._busy_keys:
            self._held.append((receiver, message))
            return None
        lease = Lease(message, receiver, 0.0, key)
        self._leases[message_id] = lease
        receiver.leases += 1
        if self.key_shared and key is not None:
            self._busy_keys.add(key)
        self._schedule(message_id, lease, time.monotonic() + lease_ms / 1000)
        return Leased(message, message_id, attempt)

    async def ack(self, message_ids: list[bytes]) -> list[Exception | None]:
        """Acknowledge each to Pulsar, all at once; each one's error, or None.

        A lease that already expired was redelivered: acking its id still settles it
        (Pulsar takes an ack from any consumer of the subscription).
        """
        targets: list[tuple[_Receiver, Any] | Exception] = []
        for message_id in message_ids:
            lease = self._release(message_id)
            if lease is not None:
                targets.append((lease.receiver, lease.message))
                continue
            try:
                receiver = await self._any_receiver()
            except Exception as exc:  # a PulsarException: no consumer to ack it through
                targets.append(exc)
            else:
                targets.append((receiver, pulsar.MessageId.deserialize(message_id)))
        sending = [t for t in targets if not isinstance(t, Exception)]
        acks = Gathering(len(sending))
        for index, (receiver, target) in enumerate(sending):
            receiver.consumer._consumer.acknowledge_async(target, acks.callback(index))
        results = iter(await acks.wait())
        return [t if isinstance(t, Exception) else error_of(next(results)[0]) for t in targets]

    async def _any_receiver(self) -> _Receiver:
        """A consumer of the subscription, opened if there is none.

        Raises: PulsarException.
        """
        return self._current or next(iter(self._retiring), None) or await self._ensure_current()

    async def _ensure_current(self) -> _Receiver:
        """The consumer pulls go through, opened once even when pulls race for it (a
        consumer dropped without closing takes pulsar-client down with it).

        Raises: PulsarException.
        """
        async with self._opening:
            if self._current is None:
                self._current = _Receiver(await self._subscribe())
            return self._current

    @staticmethod
    async def _ack(receiver: _Receiver, target: Any) -> None:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        receiver.consumer._consumer.acknowledge_async(target, callback_for(future))
        await future

    async def _move_to_dead_letters(
        self, receiver: _Receiver, message: Any, deliveries: int
    ) -> None:
        """Publish to the dead-letter topic, then ack: never the other way round."""
        try:
            await self._dead_letter(message, deliveries)
        except GatewayError as exc:
            log.warning("dead-lettering failed; retried on redelivery: %s", exc.detail)
            receiver.consumer._consumer.negative_acknowledge(message)
            return
        await self._ack(receiver, message)

    def nack(self, message_id: bytes, delay_ms: int | None) -> bool:
        """Redeliver after `delay_ms` (default: the subscription's backoff). False if not
        leased here (any more)."""
        lease = self._leases.get(message_id)
        if lease is None or lease.nacked:
            return False
        if delay_ms is None:
            delay_ms = self.config.backoff_ms(_attempt(lease.message))
        lease.nacked = True
        self._schedule(message_id, lease, time.monotonic() + delay_ms / 1000)
        return True

    def extend(self, message_id: bytes, lease_ms: int) -> bool:
        """Move the deadline to `lease_ms` from now. False if not leased here (any more)."""
        lease = self._leases.get(message_id)
        if lease is None or lease.nacked:
            return False
        self._schedule(message_id, lease, time.monotonic() + lease_ms / 1000)
        return True

    @property
    def idle(self) -> bool:
        """No lease out and no pull waiting: closing would hand back nothing in use."""
        receivers = [*self._retiring, *([self._current] if self._current else [])]
        return not self._leases and not any(r.claimed for r in receivers)

    async def maintain(self) -> None:
        """Hand back what arrived for no pull (see the module's docstring).

        Raises: PulsarException when a replacement consumer cannot be opened (the current
        one stays; the next round tries again).
        """
        current = self._current
        quiet = time.monotonic() - self.last_used > self._handoff_s
        if current is not None and quiet and not current.claimed:
            # Its prefetched entry, or a receive no pull waits on, goes back to Pulsar for
            # the workers pulling elsewhere; the next pull here opens a new consumer.
            self._current = None
            self._retiring.append(current)
        settled_before = time.monotonic() - _SETTLE_S
        for receiver in list(self._retiring):
            if (
                receiver.leases == 0
                and not receiver.claimed
                and (receiver.last_release < settled_before)
            ):
                self._retiring.remove(receiver)
                self._held = collections.deque((r, m) for r, m in self._held if r is not receiver)
                await receiver.close()

    async def close(self) -> None:
        """Close every consumer: Pulsar redelivers whatever they had not acked to others."""
        await asyncio.gather(*self._dead_lettering, return_exceptions=True)
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
        receivers = [*self._retiring, *([self._current] if self._current else [])]
        await asyncio.gather(*(r.close() for r in receivers))

    def _take_held(self) -> tuple[_Receiver, Any] | None:
        for index, (receiver, message) in enumerate(self._held):
            key = _key(message)
            if not self.key_shared or key is None or key not in self._busy_keys:
                del self._held[index]
                return receiver, message
        return None

    async def _receive(self, timeout_s: float) -> tuple[_Receiver, Any] | None:
        """The next message and the receiver it came through, or None after `timeout_s`."""
        for receiver in [*self._retiring, *([self._current] if self._current else [])]:
            message = receiver.take_arrived()
            if message is not None:
                return receiver, message
        current = self._current
        assert current is not None
        future = current.receive()
        try:
            if not future.done():  # else the client had it queued, and answered at once
                await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return None
        except asyncio.CancelledError:
            if not future.cancelled():
                raise  # this pull was cancelled (its client went away)
        finally:
            current.claimed.discard(future)
        if future.cancelled():  # the consumer closed under the pull (a seek, or idle)
            return None
        current.receives.remove(future)
        return current, future.result()

    def _redeliver(self, lease: Lease) -> None:
        """A delivery failed (nacked, or its deadline passed): deliver it again, or, if that
        was its last allowed delivery, move it to the dead-letter topic now."""
        max_deliveries = self.config.max_deliveries
        attempt = _attempt(lease.message)
        if max_deliveries is not None and attempt >= max_deliveries:
            task = asyncio.create_task(
                self._move_to_dead_letters(lease.receiver, lease.message, attempt)
            )
            self._dead_lettering.add(task)
            task.add_done_callback(self._dead_lettering.discard)
            return
        # Pulsar redelivers it (to any consumer) and counts the delivery.
        lease.receiver.consumer._consumer.negative_acknowledge(lease.message)

    def _schedule(self, message_id: bytes, lease: Lease, deadline: float) -> None:
        lease.deadline = deadline
        if not self._timers or deadline < self._timers[0].deadline:
            self._wake.set()  # the expiry task sleeps until the earliest deadline
        heapq.heappush(self._timers, _Timer(deadline, message_id))

    def _release(self, message_id: bytes) -> Lease | None:
        lease = self._leases.pop(message_id, None)
        if lease is not None:
            lease.receiver.leases -= 1
            lease.receiver.last_release = time.monotonic()
            if lease.key is not None:
                self._busy_keys.discard(lease.key)
        return lease

    async def _expire_forever(self) -> None:
        while True:
            now = time.monotonic()
            while self._timers and self._timers[0].deadline <= now:
                timer = heapq.heappop(self._timers)
                lease = self._leases.get(timer.message_id)
                if lease is None or lease.deadline != timer.deadline:
                    continue  # acked, or rescheduled: a newer timer stands for it
                self._release(timer.message_id)
                self._redeliver(lease)
            self._wake.clear()
            sleep_s = self._timers[0].deadline - now if self._timers else 3600.0
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(sleep_s, 0.001))
            except TimeoutError:
                pass


def _attempt(message: Any) -> int:
    return int(message.redelivery_count()) + 1


def _key(message: Any) -> str | None:
    return message.ordering_key() or message.partition_key() or None
