"""The gateway's connection to Pulsar: client, producers, admin clients, opened once."""

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pulsar.asyncio

from broker_gateway.errors import GatewayError
from broker_gateway.pulsar import errors, publishing
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.pulsar.codecs import Position, Start, TopicName
from broker_gateway.pulsar.contracts import Contract
from broker_gateway.pulsar.idempotency import IdempotencyStore
from broker_gateway.pulsar.messages import OutgoingMessage
from broker_gateway.pulsar.producers import ProducerCache
from broker_gateway.pulsar.queues import QueueService, ReceiptSigner
from broker_gateway.pulsar.reading import Delivery, ReaderCache, TopicReader
from broker_gateway.pulsar.schemas import Schemas
from broker_gateway.settings import Settings

log = logging.getLogger(__name__)


def _receipt_secret(settings: Settings) -> bytes:
    if settings.receipt_secret is not None:
        return settings.receipt_secret.get_secret_value().encode()
    log.warning(
        "GATEWAY_RECEIPT_SECRET is not set: receipts from this process work on it alone; "
        "give every replica the same secret"
    )
    return os.urandom(32)


T = TypeVar("T")


def connect(settings: Settings) -> pulsar.asyncio.Client:
    """A client of the data cluster (it connects on first use)."""
    cluster = settings.data_cluster
    return pulsar.asyncio.Client(
        cluster.service_url,
        authentication=None
        if cluster.token is None
        else pulsar.AuthenticationToken(cluster.token.get_secret_value()),
        operation_timeout_seconds=int(settings.pulsar_operation_timeout_s),
        connection_timeout_ms=int(settings.pulsar_connect_timeout_s * 1000),
        io_threads=settings.pulsar_io_threads,
        listener_name=cluster.listener_name,
        # Filtered in C++: a Python logger costs the GIL on every one of the client's
        # log calls, its per-message debug lines included (a fifth of publish CPU).
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
    )


class PulsarService:
    """Owns every Pulsar resource; the app's lifespan opens and closes it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        cluster = settings.data_cluster
        self.client = connect(settings)
        self.admins = {
            c.name: PulsarAdmin(c, timeout_s=settings.pulsar_operation_timeout_s)
            for c in settings.clusters
        }
        self.admin = self.admins[cluster.name]
        self.producers = ProducerCache(
            self.client,
            settings.producer_idle_timeout_s,
            settings.named_producer_idle_timeout_s,
            send_timeout_s=settings.pulsar_send_timeout_s,
        )
        self.idempotency = IdempotencyStore(
            self.client,
            self.admin,
            self.producers,
            TopicName.parse(*settings.idempotency_topic.split("/")),
            self.find_tagged,
            ttl_s=settings.idempotency_ttl_s,
            wait_ready_s=settings.pulsar_operation_timeout_s,
            # A message is sent within the operation timeout (its producer) and is
            # persisted or failed within the send timeout; 5 s for the replicas' clocks.
            in_doubt_s=settings.pulsar_operation_timeout_s + settings.pulsar_send_timeout_s + 5,
        )
        self.schemas = Schemas(self.admin, refresh_s=settings.schema_refresh_s)
        self.readers = ReaderCache(settings.read_readers_kept, settings.read_reader_idle_s)
        self.queues = QueueService(
            self.client,
            self.admin,
            self.producers,
            ReceiptSigner(_receipt_secret(settings)),
            settings.control_topic,
            idle_timeout_s=settings.queue_consumer_idle_timeout_s,
            handoff_s=settings.queue_handoff_s,
            config_refresh_s=settings.queue_config_refresh_s,
        )

    async def open(self) -> None:
        self.readers.start()
        self.producers.start()
        self.idempotency.start()
        self.queues.start()

    async def close(self) -> None:
        await self.readers.close()
        await self.queues.close()
        await self.idempotency.close()
        await self.producers.close()
        for admin in self.admins.values():
            await admin.close()
        await self.client.close()

    async def check_clusters(self) -> dict[str, str | None]:
        """Each cluster's readiness problem, or None where it is ready."""

        async def check(admin: PulsarAdmin) -> str | None:
            try:
                await admin.ready(self._settings.readiness_timeout_s)
            except GatewayError as exc:
                return exc.detail
            return None

        names = list(self.admins)
        results = await asyncio.gather(*(check(self.admins[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def publish(
        self,
        topic: TopicName,
        messages: list[OutgoingMessage],
        producer_name: str | None,
        contract: Contract | None = None,
    ) -> list[publishing.Outcome]:
        """Send messages already under `contract` (the topic's schema at one version),
        with a producer presenting that schema.

        Raises: GatewayError when nothing could be sent.
        """
        return await self.on_topic(
            topic,
            lambda: publishing.publish(
                self.producers, topic, messages, producer_name=producer_name, contract=contract
            ),
        )

    async def contract(self, topic: TopicName, version: int | None = None) -> Contract | None:
        """The topic's contract: its latest schema, or the `version` pinned; None when it
        has no schema (or one that constrains nothing, like BYTES).

        Raises: SchemaVersionUnknown; GatewayError.
        """
        if version is None:
            return await self.schemas.current(topic)
        return await self.schemas.version(topic, version)

    async def decoders(self, topic: TopicName, messages: Iterable[Any]) -> dict[int, Contract]:
        """The contracts that turn these messages' payloads into JSON values, by schema
        version: for AVRO and primitive schemas (JSON payloads are JSON already). Empty
        when there is nothing to decode, or the schemas cannot be had now (the payloads
        then go out as they are stored)."""
        try:
            current = await self.schemas.current(topic)
            if current is None or current.type == "JSON":
                return {}
            versions = {m.int_schema_version() for m in messages}
            found = await self.schemas.by_version(topic, versions)
            # Messages with no version (pulsar-client stamps none for primitive schemas):
            # the topic's schema; bytes that do not decode under it go out as `data`.
            found[-1] = current
            return found
        except GatewayError as exc:
            log.warning("reading %s without its schema: %s", topic, exc.detail)
            return {}

    async def read(
        self,
        topic: TopicName,
        start: Start,
        *,
        limit: int,
        wait_s: float,
        stop: asyncio.Event | None = None,
        cursor: str | None = None,
    ) -> tuple[list[Delivery], str]:
        """A page of messages and the cursor after it. `cursor` is the text `start` came
        from, when it is a cursor: the reader of the page that ended there is reused.

        Raises: GatewayError (TopicNotFound, BrokerUnavailable, BrokerTimeout, ...).
        """
        reader = None if cursor is None else await self.readers.take(topic, cursor)
        if reader is None:
            reader = await self._open_reader(topic, start, queue_size=min(limit, 1000))
        try:
            deliveries = await self.next_batch(topic, reader, limit, wait_s, stop)
        except BaseException:
            await reader.close()
            raise
        after = reader.cursor
        await self.readers.keep(topic, reader)
        return deliveries, after

    async def next_batch(
        self,
        topic: TopicName,
        reader: TopicReader,
        limit: int,
        wait_s: float,
        stop: asyncio.Event | None = None,
        *,
        cursors: bool = False,
    ) -> list[Delivery]:
        """Up to `limit` messages, waiting up to `wait_s` (or until `stop`) for a first one;
        with `cursors`, each with the cursor after it.

        Raises: GatewayError.
        """
        return await self.on_topic(topic, lambda: reader.read(limit, wait_s, stop, cursors=cursors))

    async def find_tagged(
        self, topic: TopicName, since_ms: int, name: str, prefix: str
    ) -> dict[str, Position]:
        """The messages published to `topic` since `since_ms` whose property `name` starts
        with `prefix`: its value -> their position. Reads up to the end of the topic.

        Raises: GatewayError.
        """
        found: dict[str, Position] = {}
        async with self.reader(topic, Start("time", time_ms=since_ms), queue_size=1000) as reader:
            while batch := await self.next_batch(topic, reader, 1000, wait_s=0):
                for delivery in batch:
                    value = delivery.message.properties().get(name, "")
                    if value.startswith(prefix):
                        found.setdefault(value, delivery.position)
        return found

    @asynccontextmanager
    async def reader(
        self, topic: TopicName, start: Start, *, queue_size: int
    ) -> AsyncIterator[TopicReader]:
        """A TopicReader that is closed on leaving, however the caller leaves.

        Raises: GatewayError.
        """
        reader = await self._open_reader(topic, start, queue_size=queue_size)
        try:
            yield reader
        finally:
            await reader.close()

    async def _open_reader(self, topic: TopicName, start: Start, *, queue_size: int) -> TopicReader:
        return await self.on_topic(
            topic,
            lambda: TopicReader.open(self.client, self.admin, topic, start, queue_size=queue_size),
        )

    async def on_topic(self, topic: TopicName, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a Pulsar operation on `topic` of the data cluster, errors as the gateway's."""
        return await errors.on_topic(self.admin, topic, operation)
