"""Idempotency-Key results, kept in a Pulsar topic so every replica and restart sees them.

Each publish answered under an Idempotency-Key is recorded as one message keyed by
sha256(topic, key). Every replica tails that topic from `now - ttl` into memory, so a retry
that reaches any replica, or the same replica after a restart, gets the first answer back.

What it does not cover, by design: two requests with the same key in flight at the same
time on two different replicas (both publish), and a gateway killed between the broker's
acknowledgement and the record (the retry publishes again). Within one replica, concurrent
requests with the same key wait for the first one.
"""

import asyncio
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

from broker_gateway.errors import BrokerUnavailable, GatewayError, IdempotencyKeyReused
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.pulsar.bridge import has_message_available, read_next
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.messages import OutgoingMessage
from broker_gateway.pulsar.producers import ProducerCache
from broker_gateway.pulsar.publishing import send

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Record:
    fingerprint: str
    answer: Answer
    recorded_ms: int


def record_key(topic: TopicName, idempotency_key: str) -> str:
    return hashlib.sha256(f"{topic.path}\n{idempotency_key}".encode()).hexdigest()


class IdempotencyStore:
    def __init__(
        self,
        client: pulsar.asyncio.Client,
        admin: PulsarAdmin,
        producers: ProducerCache,
        topic: TopicName,
        *,
        ttl_s: int,
        wait_ready_s: float,
    ) -> None:
        self._client = client
        self._admin = admin
        self._producers = producers
        self._topic = topic
        self._ttl_ms = ttl_s * 1000
        self._wait_ready_s = wait_ready_s
        self._records: dict[str, _Record] = {}
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
        publish: Callable[[], Awaitable[Answer]],
    ) -> tuple[Answer, bool]:
        """The first answer given under this key (and True), or `publish()`'s, recorded.

        Raises: IdempotencyKeyReused; BrokerUnavailable while the store is not loaded;
        whatever `publish` raises (nothing is recorded then, so a retry publishes).
        """
        key = record_key(topic, idempotency_key)
        while True:
            await self._wait_ready()
            known = self._lookup(key, fingerprint)
            if known is not None:
                return known, True
            in_flight = self._in_flight.get(key)
            if in_flight is None:
                break
            await asyncio.shield(in_flight)  # then look again: it may have failed

        mine: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = mine
        try:
            answer = await publish()
            if answer.status < 300:
                await self._record(key, _Record(fingerprint, answer, _now_ms()))
        finally:
            self._in_flight.pop(key, None)
            mine.set_result(None)
        return answer, False

    def _lookup(self, key: str, fingerprint: str) -> Answer | None:
        record = self._records.get(key)
        if record is None or _now_ms() - record.recorded_ms > self._ttl_ms:
            return None
        if record.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with a different request; use a new key"
            )
        return record.answer

    async def _record(self, key: str, record: _Record) -> None:
        payload = orjson.dumps(
            {
                "fingerprint": record.fingerprint,
                "status": record.answer.status,
                "body": record.answer.body,
                "recorded_ms": record.recorded_ms,
            }
        )
        self._remember(key, record)
        try:
            await send(
                self._producers,
                self._topic,
                OutgoingMessage(payload, key=key),
            )
        except GatewayError as exc:
            # The messages are in Pulsar and the client gets its answer; only a retry on
            # another replica (or after a restart) would publish again.
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
            raw = orjson.loads(message.data())
            record = _Record(
                raw["fingerprint"], Answer(raw["status"], raw["body"]), raw["recorded_ms"]
            )
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("skipping a malformed idempotency record")
            return
        self._remember(message.partition_key(), record)

    def _remember(self, key: str, record: _Record) -> None:
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


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
