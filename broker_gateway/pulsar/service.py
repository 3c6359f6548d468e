"""The gateway's connection to Pulsar: client, producers, admin clients, opened once."""

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pulsar.asyncio

from broker_gateway.errors import BrokerTimeout, BrokerUnavailable, GatewayError
from broker_gateway.metrics import Metrics
from broker_gateway.pulsar import errors, publishing, regions
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.pulsar.codecs import Start, TopicName
from broker_gateway.pulsar.contracts import Contract
from broker_gateway.pulsar.idempotency import IdempotencyStore
from broker_gateway.pulsar.messages import OutgoingMessage
from broker_gateway.pulsar.queues import QueueService, ReceiptSigner
from broker_gateway.pulsar.queues.regional import Queues
from broker_gateway.pulsar.reading import Delivery, ReaderCache, TopicReader
from broker_gateway.pulsar.regions import Region, Regions
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

# A cursor of a peer resuming in a cluster that was down: from this long before it went
# down (replicas find a failure at different times), at most this far back.
_RESUME_MARGIN_MS = 10_000
_RESUME_LOOKBACK_MAX_MS = 3_600_000


def _abandoned(task: "asyncio.Future[Any]") -> None:
    """Retrieve what an abandoned operation came to (its reader may be closed under it),
    so it is not logged as a task exception nobody retrieved."""
    if not task.cancelled():
        task.exception()


def _resumed_in(region: Region, time_ms: int) -> Start:
    """Where a cursor made in another cluster, whose last message was published at
    `time_ms`, resumes in `region`: from that time, by Pulsar's search by publish time.

    Coming back to a cluster that was down, that search cannot be trusted: what the peer
    stored meanwhile reaches the cluster by replication after it returns, behind messages
    published there since, so publish times there are not in order, and the search may land
    past messages the reader has not seen. It resumes from before the cluster went down
    instead (where the order still holds), passing over what was published before
    `time_ms`: the reader saw that in the peer.
    """
    down = region.went_down_ms
    if down is None or not 0 <= time_ms - down <= _RESUME_LOOKBACK_MAX_MS:
        return Start("time", time_ms=time_ms)
    return Start("time", time_ms=down - _RESUME_MARGIN_MS, skip_before_ms=time_ms)


def connect(settings: Settings) -> pulsar.asyncio.Client:
    """A client of the home cluster (it connects on first use)."""
    return regions.connect(settings.data_cluster, settings)


class PulsarService:
    """Owns every Pulsar resource; the app's lifespan opens and closes it."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.admins = {
            c.name: PulsarAdmin(c, timeout_s=settings.pulsar_operation_timeout_s)
            for c in settings.clusters
        }
        self.regions = Regions(settings, self.admins, metrics.region_changed)
        home = self.regions.home
        self.client, self.admin, self.producers = home.client, home.admin, home.producers
        self.idempotency = IdempotencyStore(
            self.regions,
            lambda topic, messages: self.publish(topic, messages, None),
            TopicName.parse(*settings.idempotency_topic.split("/")),
            self.find_tagged,
            ttl_s=settings.idempotency_ttl_s,
            wait_ready_s=settings.pulsar_operation_timeout_s,
            # A message is sent within the operation timeout (its producer) and is
            # persisted or failed within the send timeout; 5 s for the replicas' clocks.
            in_doubt_s=settings.pulsar_operation_timeout_s + settings.pulsar_send_timeout_s + 5,
        )
        self.schemas = Schemas(
            lambda topic: self.regions.route(topic).admin, refresh_s=settings.schema_refresh_s
        )
        self.readers = ReaderCache(settings.read_readers_kept, settings.read_reader_idle_s)
        metrics.sample(
            "producers", lambda: sum(len(r.producers) for r in self.regions.all.values())
        )
        metrics.sample("readers", lambda: len(self.readers))
        signer = ReceiptSigner(_receipt_secret(settings))
        self.queues = Queues(
            self.regions,
            lambda region: QueueService(
                region.client,
                region.admin,
                region.producers,
                signer,
                settings.control_topic,
                cluster=region.name,
                home=region is self.regions.home,
                idle_timeout_s=settings.queue_consumer_idle_timeout_s,
                handoff_s=settings.queue_handoff_s,
                config_refresh_s=settings.queue_config_refresh_s,
                metrics=metrics,
            ),
        )

    async def open(self) -> None:
        self.readers.start()
        self.regions.start()
        self.idempotency.start()
        self.queues.start()
        self._metrics.sample("queue_consumers", self.queues.consumers)
        self._metrics.sample("leases", self.queues.leases)

    async def close(self) -> None:
        await self.readers.close()
        await self.queues.close()
        await self.idempotency.close()
        await self.regions.close()
        for admin in self.admins.values():
            await admin.close()

    async def publish(
        self,
        topic: TopicName,
        messages: list[OutgoingMessage],
        producer_name: str | None,
        contract: Contract | None = None,
    ) -> list[publishing.Outcome]:
        """Send messages already under `contract` (the topic's schema at one version),
        with a producer presenting that schema, to the region serving the topic. Where
        the topic replicates to peers and that region is found down, the messages it did
        not persist go to the next region up.

        Raises: GatewayError when nothing could be sent.
        """
        peers = await self.regions.peers(topic)
        if not peers:  # served by home alone, as patient as the send timeout
            return await self._publish_in(
                self.regions.home, topic, messages, producer_name, contract, patient=True
            )
        outcomes: list[publishing.Outcome] = [None] * len(messages)
        todo = list(range(len(messages)))
        for region in self._failover_order(topic, peers):
            batch = [messages[i] for i in todo]
            try:
                sent = await self._publish_in(
                    region, topic, batch, producer_name, contract, patient=False
                )
            except (BrokerUnavailable, BrokerTimeout) as exc:
                if len(todo) == len(messages) and not await self.regions.confirm_down(region):
                    raise  # nothing was sent, and the region is up: the client retries
                sent = [exc] * len(batch)
            for index, outcome in zip(todo, sent, strict=True):
                outcomes[index] = outcome
            todo = [i for i in todo if isinstance(outcomes[i], (BrokerUnavailable, BrokerTimeout))]
            if not todo or not await self.regions.confirm_down(region):
                break
        return outcomes

    async def _publish_in(
        self,
        region: Region,
        topic: TopicName,
        messages: list[OutgoingMessage],
        producer_name: str | None,
        contract: Contract | None,
        *,
        patient: bool,
    ) -> list[publishing.Outcome]:
        """Publish in one region; unless `patient`, waiting on it at most the detection
        time before its health is checked (and giving up if it is down)."""

        async def give_up() -> bool:
            return await self.regions.confirm_down(region)

        outcomes = await errors.on_topic(
            region.admin,
            topic,
            lambda: publishing.publish(
                region.producers,
                topic,
                messages,
                cluster=region.name,
                producer_name=producer_name,
                contract=contract,
                patience_s=None if patient else self.regions.detect_s,
                give_up=give_up,
            ),
        )
        if any(not isinstance(o, GatewayError) for o in outcomes):
            region.answered()
        return outcomes

    def _failover_order(self, topic: TopicName, peers: tuple[Region, ...]) -> list[Region]:
        """The region serving the topic, then its other regions that are up."""
        first = self.regions.route(topic)
        return [first, *(r for r in (self.regions.home, *peers) if r is not first and r.up)]

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
        region = await self.regions.serving(topic)
        reader = None if cursor is None else await self.readers.take(topic, cursor)
        if reader is not None and reader.cluster != region.name:
            await reader.close()  # failed over (or back) since that page
            reader = None
        if reader is None:
            reader = await self._while_up(
                region, self._open_reader(topic, start, queue_size=min(limit, 1000))
            )
        try:
            deliveries = await self.next_batch(topic, reader, limit, wait_s, stop)
        except BaseException:
            await reader.close()
            raise
        after = reader.cursor
        await self.readers.keep(topic, reader)
        return deliveries, after

    async def _while_up(self, region: Region, operation: Awaitable[T]) -> T:
        """`operation`, unless `region` goes down first (a Pulsar client waits for a dead
        cluster to come back): then BrokerUnavailable, and a retry goes where the topic
        is served now.

        Raises: BrokerUnavailable; what `operation` raises.
        """
        if len(self.regions.all) == 1:
            return await operation
        went_down = BrokerUnavailable(
            f"cluster {region.name} went down: retry, to resume where the topic is served now"
        )
        task = asyncio.ensure_future(operation)
        moved = asyncio.ensure_future(region.moved().wait())
        try:
            await asyncio.wait([task, moved], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the caller is gone (a client hung up): so is the operation
            task.cancel()
            task.add_done_callback(_abandoned)
            raise
        finally:
            moved.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise went_down
        try:
            return task.result()
        except (BrokerUnavailable, BrokerTimeout):
            if await self.regions.confirm_down(region):
                raise went_down from None
            raise

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
        return await self._while_up(
            self.regions.all[reader.cluster],
            self.on_topic(topic, lambda: reader.read(limit, wait_s, stop, cursors=cursors)),
        )

    async def find_tagged(
        self, topic: TopicName, since_ms: int, name: str, prefix: str
    ) -> dict[str, publishing.Persisted]:
        """The messages published to `topic` since `since_ms` whose property `name` starts
        with `prefix`: its value -> where it is. Reads up to the end of the topic, in the
        region serving it.

        Raises: GatewayError.
        """
        found: dict[str, publishing.Persisted] = {}
        async with self.reader(topic, Start("time", time_ms=since_ms), queue_size=1000) as reader:
            while batch := await self.next_batch(topic, reader, 1000, wait_s=0):
                for delivery in batch:
                    value = delivery.message.properties().get(name, "")
                    if value.startswith(prefix):
                        found.setdefault(
                            value, publishing.Persisted(delivery.position, reader.cluster)
                        )
        return found

    @asynccontextmanager
    async def reader(
        self, topic: TopicName, start: Start, *, queue_size: int
    ) -> AsyncIterator[TopicReader]:
        """A TopicReader that is closed on leaving, however the caller leaves.

        Raises: GatewayError.
        """
        region = await self.regions.serving(topic)
        reader = await self._while_up(
            region, self._open_reader(topic, start, queue_size=queue_size)
        )
        try:
            yield reader
        finally:
            await reader.close()

    async def _open_reader(self, topic: TopicName, start: Start, *, queue_size: int) -> TopicReader:
        """A reader in the region serving `topic`. A cursor of another cluster resumes
        there from its publish time (its positions mean nothing there)."""
        region = await self.regions.serving(topic)
        if start.kind == "after" and start.cluster not in (None, region.name):
            start = _resumed_in(region, start.time_ms or 0)
        return await errors.on_topic(
            region.admin,
            topic,
            lambda: TopicReader.open(
                region.client,
                region.admin,
                topic,
                start,
                queue_size=queue_size,
                cluster=region.name,
            ),
        )

    async def on_topic(self, topic: TopicName, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a Pulsar operation on `topic` of the data cluster, errors as the gateway's."""
        return await errors.on_topic(self.admin, topic, operation)
