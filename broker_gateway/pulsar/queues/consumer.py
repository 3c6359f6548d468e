"""One replica's Pulsar consumers on a work-queue subscription, feeding its lease table.

- Prefetch is as small as Pulsar's client allows: one entry (one message, or one batch) per
  partition waits in this replica's consumer ahead of pulls. A receive whose pull stopped
  waiting is not cancelled: the next pull here claims it, so a message it brings is kept.
- A message that reached this replica while no pull waited must not sit here while workers
  ask other replicas. After `handoff_s` without a pull, the consumer is replaced: a new one
  opens first (so the subscription never loses all consumers, and Pulsar keeps its
  redelivery counts), and the old one closes once its leases are settled, handing back what
  it still held. A consumer is never replaced under a pull in progress.
- A message whose last allowed delivery fails is published to the dead-letter topic, then
  acked, by the replica that leased it; never acked first.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pulsar
import pulsar.asyncio

from broker_gateway.errors import GatewayError
from broker_gateway.pulsar import bridge
from broker_gateway.pulsar.errors import PULSAR_ERRORS
from broker_gateway.pulsar.messages import position_of
from broker_gateway.pulsar.queues.config import SubscriptionConfig
from broker_gateway.pulsar.queues.leases import Admission, Lease, LeaseTable, MessageId

log = logging.getLogger(__name__)

# How long a pull that already has a message waits for each next one.
_NEXT_MESSAGE_S = 0.01
# A retired consumer closes this long after its last lease ended: the client sends a nack's
# redelivery request a little later, and a close would hand the message back uncounted.
_SETTLE_S = 1.0


class _Receiver:
    """One Pulsar consumer of this replica and the receives sent through it."""

    def __init__(self, consumer: pulsar.asyncio.Consumer) -> None:
        self.consumer = consumer
        self.receives: list[asyncio.Future[Any]] = []
        self.claimed: set[asyncio.Future[Any]] = set()  # a pull waits on these
        # Receives the client did not answer at once, not taken from yet.
        self._waited: set[asyncio.Future[Any]] = set()

    def take_arrived(self) -> Any:
        """The earliest message that has arrived, whichever pull asked for it: receives
        complete in the order they were asked for, and a key's messages must be leased in
        that order.

        Save for one race in pulsar-client (ConsumerImpl::executeNotifyCallback): it finds
        no receive waiting for message n, releases its lock, then queues n; a receive that
        starts waiting in between gets n + 1. n is queued before n + 1 is handed over: when
        a waited receive is done, n is still in the client's queue, or a receive asked
        since has it. Receives that wait are answered in the order they were asked, so
        nothing that has not arrived can come before n + 1: the earliest of those that have
        arrived goes first.
        """
        while self.receives and self.receives[0].done():  # the done ones come first
            head = self.receives[0]
            if head in self._waited:
                self._waited.discard(head)
                earliest = self._earliest_arrived(head)
                if earliest is not head:
                    self.receives.remove(earliest)
                    self.claimed.discard(earliest)
                    return earliest.result()
            self.receives.pop(0)
            self.claimed.discard(head)
            if not head.cancelled():
                return head.result()
        return None

    def _earliest_arrived(self, head: "asyncio.Future[Any]") -> "asyncio.Future[Any]":
        if head.cancelled() or head.exception() is not None:
            return head
        queued = bridge.poll_consumer(self.consumer)
        if queued is not None:  # it came after every receive asked so far
            self.receives.append(_arrived(queued))
        arrived = [
            f for f in self.receives if f.done() and not f.cancelled() and f.exception() is None
        ]
        # Pulsar's order within a partition (across partitions, none is promised).
        return min(arrived, key=lambda f: position_of(f.result().message_id()))

    def receive(self) -> "asyncio.Future[Any]":
        """A pending receive no pull waits on, or a new one, claimed for the caller."""
        unclaimed = [f for f in self.receives if f not in self.claimed and not f.done()]
        if unclaimed:
            future = unclaimed[0]
        else:
            future = asyncio.get_running_loop().create_future()
            bridge.receive_async(self.consumer, future)
            self.receives.append(future)
            if not future.done():
                self._waited.add(future)
        self.claimed.add(future)
        return future

    async def close(self) -> None:
        for future in self.receives:
            if future.done() and not future.cancelled():
                future.exception()  # a receive ending with its consumer is expected
            else:
                future.cancel()
        try:
            await self.consumer.close()
        except PULSAR_ERRORS as exc:
            log.warning("closing consumer on %s failed: %s", self.consumer.topic(), exc)


@dataclass(frozen=True, slots=True)
class Leased:
    message: Any  # _pulsar.Message
    message_id: MessageId
    delivery_attempt: int


class QueueConsumer:
    def __init__(
        self,
        subscribe: Callable[[], Awaitable[pulsar.asyncio.Consumer]],
        config: SubscriptionConfig,
        *,
        dead_letter: Callable[[SubscriptionConfig, Any, int], Awaitable[None]],
        skip: Callable[[Any], bool],
        handoff_s: float,
        on_lease_expired: Callable[[], None] = lambda: None,
    ) -> None:
        """`subscribe()` opens a Pulsar consumer; `dead_letter(config, message, deliveries)`
        publishes a message delivered `max_deliveries` times; `skip(message)` says it is not
        for this subscription."""
        self._subscribe = subscribe
        # Replaced in place when the subscription's settings change (not its type).
        self.config = config
        self._dead_letter = dead_letter
        self._skip = skip
        self._handoff_s = handoff_s
        self._on_lease_expired = on_lease_expired
        self._leases: LeaseTable[_Receiver] = LeaseTable(key_shared=config.type == "key_shared")
        self._current: _Receiver | None = None
        self._retiring: list[_Receiver] = []
        self._pulls = 0
        self._wake = asyncio.Event()
        self._expiry: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()
        self._dead_lettering: set[asyncio.Task[None]] = set()
        self.last_used = time.monotonic()

    def leases(self) -> int:
        return len(self._leases)

    def start(self) -> None:
        self._expiry = asyncio.create_task(self._expire_forever(), name="lease-expiry")

    # --- pull ------------------------------------------------------------------------------

    async def pull(
        self, max_messages: int, wait_s: float, lease_ms: int, stop: asyncio.Event | None = None
    ) -> list[Leased]:
        """Lease up to `max_messages`, waiting up to `wait_s` (or until `stop`) for the first.

        Raises: PulsarException when no consumer can be opened.
        """
        self._pulls += 1
        self.last_used = time.monotonic()
        leased: list[Leased] = []
        give_up = time.monotonic() + wait_s
        try:
            while len(leased) < max_messages:
                held = self._leases.lease_held(lease_ms)
                if held is not None:  # its key is free now: it goes before newer ones
                    leased.append(Leased(held.message, held.message_id, _attempt(held.message)))
                    self._wake.set()
                    continue
                remaining = _NEXT_MESSAGE_S if leased else give_up - time.monotonic()
                if stop is not None and stop.is_set():
                    remaining = 0  # take what has arrived, wait for nothing
                arrival = await self._receive(max(remaining, 0), stop)
                if arrival is None:
                    break
                item = await self._admit(*arrival, lease_ms)
                if item is not None:
                    leased.append(item)
        finally:
            self._pulls -= 1
            self.last_used = time.monotonic()
        return leased

    async def _receive(
        self, timeout_s: float, stop: asyncio.Event | None = None
    ) -> tuple[_Receiver, Any] | None:
        """The next message and the receiver it came through, or None after `timeout_s`.

        Several pulls may wait at once, each on a receive of its own; whichever wakes takes
        the earliest message that has arrived, and the others wait on.
        """
        give_up = time.monotonic() + timeout_s
        while True:
            for receiver in self._receivers():
                message = receiver.take_arrived()
                if message is not None:
                    return receiver, message
            current = await self._ensure_current()
            future = current.receive()
            try:
                if not future.done():  # else the client had it queued, and answered at once
                    remaining = max(give_up - time.monotonic(), 0)
                    if not await _arrives(future, remaining, stop):
                        return None
            except asyncio.CancelledError:
                if not future.cancelled():
                    raise  # this pull was cancelled (its client went away)
            finally:
                current.claimed.discard(future)
            if future.cancelled():  # the consumer closed under the pull (a seek, or idle)
                return None
            if future.done() and future in current.receives:
                # Ours came at once, from the client's queue, while an earlier receive's
                # message is still on its way to the loop: let that one land first.
                await asyncio.sleep(0)

    async def _admit(self, receiver: _Receiver, message: Any, lease_ms: int) -> Leased | None:
        """Lease a received message, or deal with it: not ours, dead, duplicate, key busy."""
        message_id = message.message_id().serialize()
        if self._leases.get(message_id) is not None:
            return None  # a redelivery of what a worker holds now (a batch sibling's nack)
        if self._skip(message):
            await self._ack_one(receiver, message)
            return None
        attempt = _attempt(message)
        max_deliveries = self.config.max_deliveries
        # Normally moved when its last delivery failed; this catches one delivered more often
        # meanwhile (a replica that died while holding it, a lowered max_deliveries).
        if max_deliveries is not None and attempt > max_deliveries:
            await self._move_to_dead_letters(receiver, message, attempt - 1)
            return None
        admission = self._leases.admit(message_id, message, receiver, _key(message), lease_ms)
        if admission is not Admission.LEASED:
            return None
        self._wake.set()  # the expiry task learns of the new deadline
        return Leased(message, message_id, attempt)

    # --- settle ------------------------------------------------------------------------------

    async def ack(self, message_ids: list[MessageId]) -> list[Exception | None]:
        """Acknowledge each to Pulsar, all at once; each one's error, or None.

        A lease that already expired was redelivered: acking its id still settles it
        (Pulsar takes an ack from any consumer of the subscription).
        """
        targets: list[tuple[_Receiver, Any] | Exception] = []
        for message_id in message_ids:
            lease = self._leases.ack(message_id)
            if lease is not None:
                targets.append((lease.holder, lease.message))
                continue
            try:
                receiver = await self._any_receiver()
            except PULSAR_ERRORS as exc:  # no consumer to ack it through
                targets.append(exc)
            else:
                targets.append((receiver, pulsar.MessageId.deserialize(message_id)))
        sending = [t for t in targets if not isinstance(t, Exception)]
        acks = bridge.Gathering(len(sending))
        for index, (receiver, target) in enumerate(sending):
            bridge.acknowledge_async(receiver.consumer, target, acks.callback(index))
        results = iter(await acks.wait())
        return [
            t if isinstance(t, Exception) else bridge.error_of(next(results)[0]) for t in targets
        ]

    def nack(self, message_id: MessageId, delay_ms: int | None) -> bool:
        """Redeliver after `delay_ms` (default: the subscription's backoff). False if not
        leased here (any more)."""
        lease = self._leases.get(message_id)
        if lease is None:
            return False
        if delay_ms is None:
            delay_ms = self.config.backoff_ms(_attempt(lease.message))
        if not self._leases.nack(message_id, delay_ms):
            return False
        self._wake.set()
        return True

    def extend(self, message_id: MessageId, lease_ms: int) -> bool:
        """Move the deadline to `lease_ms` from now. False if not leased here (any more)."""
        if not self._leases.extend(message_id, lease_ms):
            return False
        self._wake.set()
        return True

    # --- consumers -----------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No lease out and no pull under way: closing would hand back nothing in use."""
        return not self._leases and not self._pulls

    async def maintain(self) -> None:
        """Hand back what arrived for no pull (see the module's docstring).

        Raises: PulsarException when a consumer cannot be closed.
        """
        current = self._current
        quiet = time.monotonic() - self.last_used > self._handoff_s
        if current is not None and quiet and not self._pulls:
            # Its prefetched entry, or a receive no pull waits on, goes back to Pulsar for
            # the workers pulling elsewhere; the next pull here opens a new consumer.
            self._current = None
            self._retiring.append(current)
        for receiver in list(self._retiring):
            if not receiver.claimed and self._leases.settled(receiver, _SETTLE_S):
                self._retiring.remove(receiver)
                self._leases.forget(receiver)
                await receiver.close()

    async def close(self) -> None:
        """Close every consumer: Pulsar redelivers whatever they had not acked to others."""
        await asyncio.gather(*self._dead_lettering, return_exceptions=True)
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
        await asyncio.gather(*(r.close() for r in self._receivers()))

    def _receivers(self) -> list[_Receiver]:
        return [*self._retiring, *([self._current] if self._current else [])]

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
        if self._current is not None:  # the usual case: no lock to take
            return self._current
        async with self._opening:
            if self._current is None:
                self._current = _Receiver(await self._subscribe())
            return self._current

    # --- redelivery and dead letters -------------------------------------------------------

    @staticmethod
    async def _ack_one(receiver: _Receiver, target: Any) -> None:
        """Raises: PulsarException."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        bridge.acknowledge_async(receiver.consumer, target, bridge.callback_for(future))
        await future

    async def _move_to_dead_letters(
        self, receiver: _Receiver, message: Any, deliveries: int
    ) -> None:
        """Publish to the dead-letter topic, then ack: never the other way round."""
        try:
            await self._dead_letter(self.config, message, deliveries)
        except GatewayError as exc:
            log.warning("dead-lettering failed; retried on redelivery: %s", exc.detail)
            bridge.negative_acknowledge(receiver.consumer, message)
            return
        try:
            await self._ack_one(receiver, message)
        except PULSAR_ERRORS as exc:  # it comes back, and is moved again: a duplicate
            log.warning("acking a dead-lettered message failed: %s", exc)

    def _redeliver(self, lease: Lease[_Receiver]) -> None:
        """A delivery failed (nacked, or its deadline passed): deliver it again, or, if that
        was its last allowed delivery, move it to the dead-letter topic now."""
        receiver = lease.holder
        max_deliveries = self.config.max_deliveries
        attempt = _attempt(lease.message)
        if max_deliveries is not None and attempt >= max_deliveries:
            task = asyncio.create_task(self._move_to_dead_letters(receiver, lease.message, attempt))
            self._dead_lettering.add(task)
            task.add_done_callback(self._dead_lettering.discard)
            return
        bridge.negative_acknowledge(receiver.consumer, lease.message)

    async def _expire_forever(self) -> None:
        while True:
            for lease in self._leases.due():
                if not lease.nacked:
                    self._on_lease_expired()
                self._redeliver(lease)
            self._wake.clear()
            deadline = self._leases.next_deadline()
            sleep_s = deadline - time.monotonic() if deadline is not None else 3600.0
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(sleep_s, 0.001))
            except TimeoutError:
                pass


async def _arrives(
    future: "asyncio.Future[Any]", timeout_s: float, stop: asyncio.Event | None
) -> bool:
    """Whether `future` is done within `timeout_s`, before `stop`; it is never cancelled
    here, so a message it brings later is kept for the next pull."""
    waiters: set[asyncio.Future[Any]] = {asyncio.shield(future)}
    stopping = None if stop is None else asyncio.ensure_future(stop.wait())
    if stopping is not None:
        waiters.add(stopping)
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return future.done()


def _arrived(message: Any) -> "asyncio.Future[Any]":
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(message)
    return future


def _attempt(message: Any) -> int:
    return int(message.redelivery_count()) + 1


def _key(message: Any) -> str | None:
    return message.ordering_key() or message.partition_key() or None
