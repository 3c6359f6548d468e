"""Idempotency-Key results, kept in a Pulsar topic so every replica and restart sees them.

Records are messages keyed by sha256(topic, key) in one topic, a log every replica tails
from `now - ttl` and applies in order, so all replicas come to the same state per key
(`_apply`). A publish under a key goes:

1. a `pending` record with a fresh claim is written, and the replica waits until its own
   tail has applied it. The first pending record in the log wins: if another replica's (or
   an earlier attempt's) came first, this request does not publish. So two replicas never
   both publish one key, however close together the requests come;
2. each message is sent tagged with the record key and its index (property TAG_PROPERTY);
3. a 200 is recorded as the answer, to be replayed. When nothing could be sent (no
   producer) the claim is released; after any other failure it stays pending: some
   messages may be in Pulsar although their answer was lost, and so after a replica dies
   mid-publish.

A retry that finds the key pending under another claim waits until that attempt can no
longer complete (`in_doubt_s`: no message is sent later than that), with 409
`idempotency_key_in_use` and Retry-After; then it takes the claim over and looks in the
topic, from the pending record's time, for the tagged messages: those found are answered
as they are, the rest are published. A message is stored once whatever happened to the
attempt before.
"""

import asyncio
import dataclasses
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pulsar
from tenacity import AsyncRetrying, before_sleep_log, stop_after_delay, wait_exponential

from broker_gateway.errors import (
    BrokerUnavailable,
    GatewayError,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
)
from broker_gateway.pulsar.bridge import has_message_available, read_next
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.messages import OutgoingMessage, position_of
from broker_gateway.pulsar.publishing import Outcome, Persisted
from broker_gateway.pulsar.regions import Regions

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Record:
    fingerprint: str
    answer: Answer | None  # None: pending, its outcome unknown
    recorded_ms: int
    claim: str | None = None  # which attempt wrote it
    takeover: str | None = None  # a pending record: the claim it takes over


# The property that tags each message published under an Idempotency-Key.
TAG_PROPERTY = "broker-gateway-idempotency"
# Messages are looked for from this long before the pending record (clocks of replicas).
_CLOCK_SKEW_MS = 5_000


def record_key(topic: TopicName, idempotency_key: str) -> str:
    return hashlib.sha256(f"{topic.path}\n{idempotency_key}".encode()).hexdigest()


def message_tag(key: str, index: int) -> str:
    return f"{key}/{index}"


def pending_record(
    fingerprint: str, recorded_ms: int, claim: str | None = None, takeover: str | None = None
) -> Record:
    return Record(fingerprint, None, recorded_ms, claim or secrets.token_hex(8), takeover)


@dataclass(frozen=True, slots=True)
class Release:
    """Gives up a pending claim: nothing of its attempt was sent."""

    claim: str


def encode_record(record: Record | Release) -> bytes:
    """A record as stored."""
    if isinstance(record, Release):
        return orjson.dumps({"released": record.claim})
    encoded: dict[str, Any] = {
        "fingerprint": record.fingerprint,
        "recorded_ms": record.recorded_ms,
        "claim": record.claim,
        "takeover": record.takeover,
    }
    if record.answer is not None:
        encoded |= {"status": record.answer.status, "body": record.answer.body}
    return orjson.dumps(encoded)


# Finds the messages of `topic` published since a time (epoch ms) whose property (the
# third argument) starts with a prefix (the fourth): property value -> where it is.
Finder = Callable[[TopicName, int, str, str], Awaitable[dict[str, Persisted]]]
# Publishes messages to a topic, in the region serving it (failing over as publishes do).
Publisher = Callable[[TopicName, list[OutgoingMessage]], Awaitable[list[Outcome]]]


class IdempotencyStore:
    def __init__(
        self,
        regions: Regions,
        publish: Publisher,
        topic: TopicName,
        find: Finder,
        *,
        ttl_s: int,
        wait_ready_s: float,
        in_doubt_s: float,
    ) -> None:
        self._regions = regions
        self._publish = publish
        self._topic = topic
        self._find = find
        self._ttl_ms = ttl_s * 1000
        self._wait_ready_s = wait_ready_s
        self._in_doubt_ms = int(in_doubt_s * 1000)
        self._records: dict[str, Record] = {}
        self._in_flight: dict[str, asyncio.Future[Answer | None]] = {}
        self._ready = asyncio.Event()
        # Where the last record the tail applied is, and who waits for one. The tail reads
        # the log in the region serving its topic (it moves on a failover): a record written
        # to another region is waited for until the tail is there.
        self._applied: Persisted | None = None
        self._waiting: list[tuple[Persisted, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="idempotency-store")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def answer(
        self,
        topic: TopicName,
        idempotency_key: str,
        fingerprint: str,
        messages: list[OutgoingMessage],
        publish: Callable[[list[OutgoingMessage]], Awaitable[list[Outcome]]],
        render: Callable[[list[Outcome]], Answer],
    ) -> tuple[Answer, bool]:
        """The answer recorded under this key (and True), or else `render` of publishing
        `messages` (and whether an earlier attempt had stored any of them).

        Raises: IdempotencyKeyReused; IdempotencyKeyInUse while an earlier attempt may
        still complete; BrokerUnavailable while the store is not loaded or cannot record;
        whatever `publish` or `render` raise.
        """
        key = record_key(topic, idempotency_key)
        while True:
            await self._wait_ready()
            record = self._lookup(key, fingerprint)
            if record is not None and record.answer is not None:
                return record.answer, True
            in_flight = self._in_flight.get(key)
            if in_flight is None:
                break
            await asyncio.shield(in_flight)  # then look again: it may have failed

        mine: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = mine
        try:
            claim, found = await self._claim(topic, key, fingerprint)
            tags = [message_tag(key, i) for i in range(len(messages))]
            todo = [i for i, tag in enumerate(tags) if tag not in found]
            try:
                sent = await publish([_tagged(messages[i], tags[i]) for i in todo]) if todo else []
            except GatewayError:
                await self._release(key, claim)  # nothing was sent: a retry may publish
                raise
            outcomes: dict[int, Outcome] = dict(zip(todo, sent, strict=True))
            answer = render([outcomes.get(i, found.get(t)) for i, t in enumerate(tags)])
            if answer.status < 300:
                await self._record(key, Record(fingerprint, answer, _now_ms(), claim))
        except _Answered as answered:
            return answered.answer, True
        finally:
            self._in_flight.pop(key, None)
            mine.set_result(None)
        return answer, bool(found)

    async def _claim(
        self, topic: TopicName, key: str, fingerprint: str
    ) -> tuple[str, dict[str, Persisted]]:
        """Win the key for this request: its claim, and the tagged messages an earlier
        attempt stored.

        Raises: _Answered when the key was answered meanwhile; IdempotencyKeyInUse while
        another attempt holds it; BrokerUnavailable when the claim cannot be written.
        """
        found: dict[str, Persisted] = {}
        for _ in range(3):
            takeover = None
            holder = self._lookup(key, fingerprint)
            if holder is not None and holder.answer is not None:
                raise _Answered(holder.answer)
            if holder is not None:
                found = await self._recover(topic, key, holder)
                takeover = holder.claim
            mine = pending_record(fingerprint, _now_ms(), takeover=takeover)
            await self._applied_through(await self._write(key, mine))
            holder = self._lookup(key, fingerprint)
            if holder is not None and holder.claim == mine.claim:
                return mine.claim or "", found
        raise IdempotencyKeyInUse(
            "requests with this Idempotency-Key keep arriving at once; retry later",
            retry_after_s=1,
        )

    async def _recover(self, topic: TopicName, key: str, pending: Record) -> dict[str, Persisted]:
        """The tagged messages an earlier attempt under `key` stored, once it can no longer
        store more. Raises: IdempotencyKeyInUse until then."""
        wait_ms = pending.recorded_ms + self._in_doubt_ms - _now_ms()
        if wait_ms > 0:
            raise IdempotencyKeyInUse(
                "an earlier request with this Idempotency-Key may still be publishing; "
                "retry after Retry-After seconds",
                retry_after_s=-(-wait_ms // 1000),
            )
        since_ms = pending.recorded_ms - _CLOCK_SKEW_MS
        return await self._find(topic, since_ms, TAG_PROPERTY, message_tag(key, 0)[:-1])

    def _lookup(self, key: str, fingerprint: str) -> Record | None:
        record = self._records.get(key)
        if record is None or _now_ms() - record.recorded_ms > self._ttl_ms:
            return None
        if record.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with a different request; use a new key"
            )
        return record

    async def _write(self, key: str, record: Record | Release) -> Persisted:
        """Write a record durably; where it is in the log.

        Raises: BrokerUnavailable when it cannot be written.
        """
        message = OutgoingMessage(encode_record(record), key=key)
        try:
            [outcome] = await self._publish(self._topic, [message])
        except GatewayError as exc:
            outcome = exc
        if isinstance(outcome, GatewayError):
            detail = f"the Idempotency-Key could not be recorded: {outcome.detail}"
            raise BrokerUnavailable(detail) from outcome
        assert outcome is not None  # not a named producer: never a duplicate
        return outcome

    async def _applied_through(self, position: Persisted) -> None:
        """Wait until the tail has applied the log up to `position`.

        Raises: BrokerUnavailable when it does not within the operation timeout.
        """

        if _reached(self._applied, position):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((position, future))
        try:
            await asyncio.wait_for(future, self._wait_ready_s)
        except TimeoutError:
            raise BrokerUnavailable("the Idempotency-Key log is not being read") from None

    async def _release(self, key: str, claim: str) -> None:
        try:
            await self._write(key, Release(claim))
        except BrokerUnavailable as exc:
            log.warning("releasing an Idempotency-Key failed (a retry waits): %s", exc.detail)

    async def _record(self, key: str, record: Record) -> None:
        """Record an answer; applied here at once (an answer is final), and by every
        replica from the log. The messages are in Pulsar and the client gets its answer
        even if this fails: the key stays pending, and a retry finds them by their tags."""
        self._apply(key, record)
        try:
            await self._write(key, record)
        except BrokerUnavailable as exc:
            log.warning("recording an idempotent answer failed: %s", exc.detail)

    async def _wait_ready(self) -> None:
        try:
            await asyncio.wait_for(self._ready.wait(), self._wait_ready_s)
        except TimeoutError:
            raise BrokerUnavailable("the Idempotency-Key store is not loaded yet") from None

    async def _run(self) -> None:
        """Load the last `ttl` of records, then follow the topic; reconnect on failure,
        and follow it in another region when the one serving it changes."""
        while True:
            async for attempt in AsyncRetrying(
                wait=wait_exponential(multiplier=0.5, max=10),
                stop=stop_after_delay(float("inf")),
                before_sleep=before_sleep_log(log, logging.WARNING),
            ):
                with attempt:
                    await self._follow()

    async def _follow(self) -> None:
        """Tail the log in the region serving it, until that region changes (then the
        log of the next one is applied on top of what is known: answers are final)."""
        region = await self._regions.serving(self._topic)
        moved = asyncio.ensure_future(region.moved().wait())
        minutes = -(-self._ttl_ms // 60_000)
        try:
            await region.admin.ensure_topic(self._topic, retention_minutes=minutes)
            reader = await region.client.create_reader(
                self._topic.persistent, pulsar.MessageId.earliest
            )
        except BaseException:
            moved.cancel()
            raise
        try:
            await reader.seek(_now_ms() - self._ttl_ms)
            while not moved.done():
                if not self._ready.is_set() and not await has_message_available(reader):
                    self._ready.set()
                    log.info("idempotency store loaded: %d records", len(self._records))
                message = asyncio.ensure_future(read_next(reader))
                await asyncio.wait([message, moved], return_when=asyncio.FIRST_COMPLETED)
                if not message.done():
                    message.cancel()
                    break
                self._load(message.result(), region.name)
        finally:
            moved.cancel()
            await asyncio.shield(reader.close())

    def _load(self, message: Any, cluster: str) -> None:
        try:
            record = decode_record(message.data())
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("skipping a malformed idempotency record")
        else:
            self._apply(message.partition_key(), record)
        applied = self._applied = Persisted(position_of(message.message_id()), cluster)
        if self._waiting:
            for position, future in self._waiting:
                if _reached(applied, position) and not future.done():
                    future.set_result(None)
            self._waiting = [(p, f) for p, f in self._waiting if not f.done()]

    def _apply(self, key: str, record: Record | Release) -> None:
        """One record of the log, applied as every replica applies it: an answer is final;
        the first pending claim holds until it is released, answered or taken over."""
        current = self._records.get(key)
        if isinstance(record, Release):
            if current is not None and current.answer is None and current.claim == record.claim:
                del self._records[key]
            return
        if record.answer is None and current is not None:
            if current.answer is not None:
                return
            if current.claim not in (record.claim, record.takeover):
                return
        # Re-inserted at the end, so the dict stays in time order for _expire().
        self._records.pop(key, None)
        self._records[key] = record
        self._expire()

    def _expire(self) -> None:
        # Records arrive in time order, so the oldest are first in the dict.
        horizon = _now_ms() - self._ttl_ms
        for key in list(self._records):
            if self._records[key].recorded_ms >= horizon:
                break
            del self._records[key]


def _reached(applied: Persisted | None, position: Persisted) -> bool:
    """Whether the log applied through `applied` includes `position`."""
    return (
        applied is not None
        and applied.cluster == position.cluster
        and applied.position >= position.position
    )


def decode_record(data: bytes) -> Record | Release:
    """Raises: JSONDecodeError, KeyError, TypeError for what is not a record."""
    raw = orjson.loads(data)
    if "released" in raw:
        return Release(raw["released"])
    answer = Answer(raw["status"], raw["body"]) if "status" in raw else None
    return Record(
        raw["fingerprint"], answer, raw["recorded_ms"], raw.get("claim"), raw.get("takeover")
    )


class _Answered(Exception):
    """The key was answered (by another replica) while this request was waiting."""

    def __init__(self, answer: Answer) -> None:
        super().__init__()
        self.answer = answer


def _tagged(message: OutgoingMessage, tag: str) -> OutgoingMessage:
    return dataclasses.replace(message, properties={**message.properties, TAG_PROPERTY: tag})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
