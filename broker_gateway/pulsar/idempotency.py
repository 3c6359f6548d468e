"""Idempotency-Key results, kept in a Pulsar topic so every replica and restart sees them.

Records are messages keyed by sha256(topic, key) in one topic; every replica tails it from
`now - ttl` into memory, so a retry that reaches any replica, or the same replica after a
restart, gets the first answer back. A publish under a key goes:

1. `pending` is recorded (nothing is published if that fails), and each message is sent
   tagged with the record key and its index (property TAG_PROPERTY);
2. a 200 is recorded as the answer, to be replayed. When nothing could be sent (no
   producer) the key is released; after any other failure it stays pending: some messages
   may be in Pulsar although their answer was lost, and so after a replica dies mid-publish.

A retry that finds the key pending elsewhere (or left pending here) waits until the first
attempt can no longer complete (`in_doubt_s`: no message is sent later than that), with 409
`idempotency_key_in_use` and Retry-After; then it looks in the topic, from the pending
record's time, for the tagged messages: those found are answered as they are, the rest are
published. So a message is stored once whatever happened to the attempt before. Within one
replica, concurrent requests with the same key wait for the first one; across replicas, the
second gets 409.
"""

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pulsar
import pulsar.asyncio
from tenacity import AsyncRetrying, before_sleep_log, stop_after_delay, wait_exponential

from broker_gateway.errors import (
    BrokerUnavailable,
    GatewayError,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
)
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.pulsar.bridge import has_message_available, read_next
from broker_gateway.pulsar.codecs import Position, TopicName
from broker_gateway.pulsar.messages import OutgoingMessage
from broker_gateway.pulsar.producers import ProducerCache
from broker_gateway.pulsar.publishing import Outcome, send

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


# The property that tags each message published under an Idempotency-Key.
TAG_PROPERTY = "broker-gateway-idempotency"
# Messages are looked for from this long before the pending record (clocks of replicas).
_CLOCK_SKEW_MS = 5_000


def record_key(topic: TopicName, idempotency_key: str) -> str:
    return hashlib.sha256(f"{topic.path}\n{idempotency_key}".encode()).hexdigest()


def message_tag(key: str, index: int) -> str:
    return f"{key}/{index}"


def pending_record(fingerprint: str, recorded_ms: int) -> Record:
    return Record(fingerprint, None, recorded_ms)


def encode_record(record: Record | None) -> bytes:
    """A record as stored; None releases the key."""
    if record is None:
        return orjson.dumps({"released": True})
    encoded: dict[str, Any] = {"fingerprint": record.fingerprint, "recorded_ms": record.recorded_ms}
    if record.answer is not None:
        encoded |= {"status": record.answer.status, "body": record.answer.body}
    return orjson.dumps(encoded)


# Finds the messages of `topic` published since a time (epoch ms) whose property (the
# third argument) starts with a prefix (the fourth): property value -> position.
Finder = Callable[[TopicName, int, str, str], Awaitable[dict[str, Position]]]


class IdempotencyStore:
    def __init__(
        self,
        client: pulsar.asyncio.Client,
        admin: PulsarAdmin,
        producers: ProducerCache,
        topic: TopicName,
        find: Finder,
        *,
        ttl_s: int,
        wait_ready_s: float,
        in_doubt_s: float,
    ) -> None:
        self._client = client
        self._admin = admin
        self._producers = producers
        self._topic = topic
        self._find = find
        self._ttl_ms = ttl_s * 1000
        self._wait_ready_s = wait_ready_s
        self._in_doubt_ms = int(in_doubt_s * 1000)
        self._records: dict[str, Record] = {}
        self._in_flight: dict[str, asyncio.Future[Answer | None]] = {}
        self._ready = asyncio.Event()
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
            found = {} if record is None else await self._recover(topic, key, record)
            await self._write(key, pending_record(fingerprint, _now_ms()))
            tags = [message_tag(key, i) for i in range(len(messages))]
            todo = [i for i, tag in enumerate(tags) if tag not in found]
            try:
                sent = await publish([_tagged(messages[i], tags[i]) for i in todo]) if todo else []
            except GatewayError:
                await self._write(key, None)  # nothing was sent: a retry may publish
                raise
            outcomes: dict[int, Outcome] = dict(zip(todo, sent, strict=True))
            answer = render([outcomes.get(i, found.get(t)) for i, t in enumerate(tags)])
            if answer.status < 300:
                await self._record(key, Record(fingerprint, answer, _now_ms()))
        finally:
            self._in_flight.pop(key, None)
            mine.set_result(None)
        return answer, bool(found)

    async def _recover(self, topic: TopicName, key: str, pending: Record) -> dict[str, Position]:
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

    async def _write(self, key: str, record: Record | None) -> None:
        """Record (or with None, release) `key` durably before going on.

        Raises: BrokerUnavailable when it cannot be recorded.
        """
        message = OutgoingMessage(encode_record(record), key=key)
        try:
            await send(self._producers, self._topic, message)
        except GatewayError as exc:
            detail = f"the Idempotency-Key could not be recorded: {exc.detail}"
            raise BrokerUnavailable(detail) from exc
        self._remember(key, record)

    async def _record(self, key: str, record: Record) -> None:
        """Record an answer. The messages are in Pulsar and the client gets its answer even
        if this fails: the key stays pending, and a retry finds them by their tags."""
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
        """Load the last `ttl` of records, then follow the topic; reconnect on failure."""
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.5, max=10),
            stop=stop_after_delay(float("inf")),
            before_sleep=before_sleep_log(log, logging.WARNING),
        ):
            with attempt:
                await self._follow()

    async def _follow(self) -> None:
        await self._admin.ensure_topic(self._topic, retention_minutes=-(-self._ttl_ms // 60_000))
        reader = await self._client.create_reader(self._topic.persistent, pulsar.MessageId.earliest)
        try:
            await reader.seek(_now_ms() - self._ttl_ms)
            while True:
                if not self._ready.is_set() and not await has_message_available(reader):
                    self._ready.set()
                    log.info("idempotency store loaded: %d records", len(self._records))
                self._load(await read_next(reader))
        finally:
            await asyncio.shield(reader.close())

    def _load(self, message: Any) -> None:
        try:
            record = decode_record(message.data())
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("skipping a malformed idempotency record")
            return
        self._remember(message.partition_key(), record)

    def _remember(self, key: str, record: Record | None) -> None:
        # Re-inserted at the end, so the dict stays in time order for _expire().
        self._records.pop(key, None)
        if record is not None:
            self._records[key] = record
        self._expire()

    def _expire(self) -> None:
        # Records arrive in time order, so the oldest are first in the dict.
        horizon = _now_ms() - self._ttl_ms
        for key in list(self._records):
            if self._records[key].recorded_ms >= horizon:
                break
            del self._records[key]


def decode_record(data: bytes) -> Record | None:
    """Raises: JSONDecodeError, KeyError, TypeError for what is not a record."""
    raw = orjson.loads(data)
    if raw.get("released"):
        return None
    answer = Answer(raw["status"], raw["body"]) if "status" in raw else None
    return Record(raw["fingerprint"], answer, raw["recorded_ms"])


def _tagged(message: OutgoingMessage, tag: str) -> OutgoingMessage:
    return dataclasses.replace(message, properties={**message.properties, TAG_PROPERTY: tag})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
