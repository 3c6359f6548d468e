"""One producer per topic, created once, shared by all requests, closed when idle."""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

import pulsar
import pulsar.asyncio

from broker_gateway.pulsar.contracts import Contract
from broker_gateway.pulsar.schemas import ContractSchema

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    producer: pulsar.asyncio.Producer
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0


# How the gateway's producers batch (bench/pyclient.py measures the client with these too).
PRODUCER_OPTIONS: Final[dict[str, Any]] = {
    "batching_enabled": True,
    "batching_max_publish_delay_ms": 1,
    "batching_max_messages": 1000,
    "max_pending_messages": 10_000,
    "compression_type": pulsar.CompressionType.LZ4,
    # One key per batch: Key_Shared subscriptions dispatch a batch by its key.
    "batching_type": pulsar.BatchingType.KeyBased,
}

# A producer is shared by every request to its topic, or named by the client: a named
# producer carries the client's sequence ids, which Pulsar's broker deduplication checks.
# On a topic with a schema, it presents one version of it: (topic, name, schema version).
ProducerKey = tuple[str, str | None, int | None]


class ProducerCache:
    """Producers keyed by (topic, name). Concurrent sends to one topic share its batches."""

    def __init__(
        self,
        client: pulsar.asyncio.Client,
        idle_timeout_s: float,
        named_idle_timeout_s: float,
        *,
        send_timeout_s: float,
    ) -> None:
        self._client = client
        self._send_timeout_ms = int(send_timeout_s * 1000)
        self._idle_timeout_s = idle_timeout_s
        # A named producer is exclusive to one gateway replica while open: close it soon,
        # so the client's next request may be served by another replica.
        self._named_idle_timeout_s = named_idle_timeout_s
        self._entries: dict[ProducerKey, _Entry] = {}
        self._creating: dict[ProducerKey, asyncio.Task[_Entry]] = {}
        self._schemas: dict[ProducerKey, ContractSchema] = {}
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._close_idle_forever(), name="producer-reaper")

    async def acquire(
        self, topic: str, name: str | None = None, contract: Contract | None = None
    ) -> _Entry:
        """The topic's producer (or its producer `name`), marked in use until release();
        with `contract`, one that publishes with that version of the topic's schema.

        Raises: PulsarException when the producer cannot be created.
        """
        if contract is not None and ContractSchema.possible(contract):
            key: ProducerKey = (topic, name, contract.version)
            if key not in self._schemas:  # once per producer, not per publish
                self._schemas[key] = ContractSchema(contract)
        else:  # no schema, or one pulsar-client cannot present: plain bytes
            key = (topic, name, None)
        entry = self._entries.get(key)
        if entry is None:
            task = self._creating.get(key)
            if task is None:
                task = asyncio.create_task(self._create(key), name=f"create-producer {key}")
                self._creating[key] = task
                task.add_done_callback(lambda _: self._creating.pop(key, None))
            # shield: one caller giving up must not cancel the creation others wait on.
            entry = await asyncio.shield(task)
        entry.in_flight += 1
        entry.last_used = time.monotonic()
        return entry

    @staticmethod
    def release(entry: _Entry) -> None:
        entry.in_flight -= 1
        entry.last_used = time.monotonic()

    async def _create(self, key: ProducerKey) -> _Entry:
        topic, name, _ = key
        producer = await self._client.create_producer(
            topic,
            producer_name=name,
            schema=self._schemas.get(key),
            block_if_queue_full=False,
            send_timeout_millis=self._send_timeout_ms,
            **PRODUCER_OPTIONS,
        )
        entry = _Entry(producer)
        self._entries[key] = entry
        log.debug("producer created for %s", key)
        return entry

    async def _close_idle_forever(self) -> None:
        interval = max(min(self._idle_timeout_s, self._named_idle_timeout_s) / 4, 0.25)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            idle = [
                key
                for key, entry in self._entries.items()
                if entry.in_flight == 0 and now - entry.last_used > self._idle_limit(key)
            ]
            for key in idle:
                await self._close(key)

    def _idle_limit(self, key: ProducerKey) -> float:
        return self._idle_timeout_s if key[1] is None else self._named_idle_timeout_s

    async def _close(self, key: ProducerKey) -> None:
        entry = self._entries.pop(key, None)
        self._schemas.pop(key, None)
        if entry is None:
            return
        try:
            await entry.producer.close()
        except pulsar.asyncio.PulsarException as exc:  # best effort: the broker drops it anyway
            log.warning("closing producer for %s failed: %s", key, exc)

    def __len__(self) -> int:
        return len(self._entries)

    async def close_all(self) -> None:
        """Close every producer: what they still hold fails (their cluster is down)."""
        await asyncio.gather(*(self._close(key) for key in list(self._entries)))

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        creating = list(self._creating.values())
        for task in creating:
            task.cancel()
        await asyncio.gather(*creating, return_exceptions=True)
        await asyncio.gather(*(self._close(key) for key in list(self._entries)))
