"""The work-queue service routes use: one replica's consumers by subscription, and where an
ack, nack or extension goes (here, or to the replica that holds the lease). Its errors are
the gateway's: Pulsar's are translated here, once."""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Concatenate, ParamSpec, TypeVar

import pulsar
import pulsar.asyncio

from broker_gateway.errors import (
    GatewayError,
    InvalidReceipt,
    NotFound,
    SubscriptionNotFound,
    problem_for,
)
from broker_gateway.metrics import Metrics
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.pulsar.codecs import Start, TopicName
from broker_gateway.pulsar.errors import PULSAR_ERRORS, on_topic, translate
from broker_gateway.pulsar.producers import ProducerCache
from broker_gateway.pulsar.queues import config as subscriptions
from broker_gateway.pulsar.queues.config import SubscriptionConfig
from broker_gateway.pulsar.queues.consumer import QueueConsumer
from broker_gateway.pulsar.queues.control import (
    EVERY_REPLICA,
    Ack,
    Close,
    Command,
    ControlChannel,
    Extend,
    Nack,
)
from broker_gateway.pulsar.queues.dead_letters import DeadLetters, skip_for
from broker_gateway.pulsar.queues.receipts import Receipt, ReceiptSigner

log = logging.getLogger(__name__)

ConsumerKey = tuple[str, str]  # (topic path, subscription)
P = ParamSpec("P")
T = TypeVar("T")


class ReceiptCode(StrEnum):
    """Why one receipt of an ack, nack or extend was not settled."""

    INVALID_RECEIPT = "invalid_receipt"  # forged, edited, or another subscription's
    LEASE_EXPIRED = "lease_expired"  # its deadline passed, or it was nacked: redelivered
    BROKER_UNAVAILABLE = "broker_unavailable"
    BROKER_TIMEOUT = "broker_timeout"
    BROKER_ERROR = "broker_error"

    @classmethod
    def of(cls, error: GatewayError) -> "ReceiptCode":
        code = problem_for(error).code
        return cls(code) if code in cls._value2member_map_ else cls.BROKER_ERROR


@dataclass(frozen=True, slots=True)
class Pulled:
    message: Any  # _pulsar.Message
    receipt: str
    delivery_attempt: int


@dataclass(frozen=True, slots=True)
class Settled:
    succeeded: int
    failed: list[tuple[str, ReceiptCode]]  # (receipt, why)


def _on_topic(
    method: Callable[Concatenate["QueueService", TopicName, P], Awaitable[T]],
) -> Callable[Concatenate["QueueService", TopicName, P], Coroutine[Any, Any, T]]:
    """The method with Pulsar's errors as the gateway's (see errors.on_topic)."""

    async def translated(
        self: "QueueService", topic: TopicName, /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await on_topic(self._admin, topic, lambda: method(self, topic, *args, **kwargs))

    return translated


class QueueService:
    def __init__(
        self,
        client: pulsar.asyncio.Client,
        admin: PulsarAdmin,
        producers: ProducerCache,
        signer: ReceiptSigner,
        control_topic: str,
        *,
        cluster: str,
        home: bool,
        idle_timeout_s: float,
        handoff_s: float,
        config_refresh_s: float,
        metrics: Metrics,
    ) -> None:
        """The queues of one cluster (`home`: the first configured, whose receipts from
        before receipts named a cluster are valid here)."""
        self._cluster = cluster
        self._home = home
        self._client = client
        self._admin = admin
        self._signer = signer
        self._replica = os.urandom(8)
        self._control = ControlChannel(client, control_topic, self._replica.hex())
        self._dead_letters = DeadLetters(client, producers)
        self._idle_timeout_s = idle_timeout_s
        self._handoff_s = handoff_s
        self._config_refresh_s = config_refresh_s
        self._metrics = metrics
        self._consumers: dict[ConsumerKey, QueueConsumer] = {}
        self._opening: dict[ConsumerKey, asyncio.Task[QueueConsumer]] = {}
        self._maintenance: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self._control.start(self._on_command)
        self._maintenance = asyncio.create_task(self._maintain_forever(), name="queues")

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        await self._control.close()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self._consumers.values()))
        self._consumers.clear()

    # --- configuration -------------------------------------------------------------------

    @_on_topic
    async def configure(
        self, topic: TopicName, subscription: str, config: SubscriptionConfig
    ) -> bool:
        """Create or update the subscription (see config.configure); True when created.

        Raises: GatewayError (TopicNotFound when the namespace does not create topics, ...).
        """

        async def make_topic() -> None:
            # A reader makes the topic if the namespace allows it (else TopicNotFound),
            # the same rule publishing follows.
            reader = await self._client.create_reader(topic.persistent, pulsar.MessageId.latest)
            await reader.close()

        created = await subscriptions.configure(
            self._admin, topic, subscription, config, make_topic=make_topic
        )
        # Replicas would take it up within config_refresh_s; this one and those reachable
        # now do at once (and a changed type needs new consumers).
        await self._broadcast(Close(topic.path, subscription))
        return created

    @_on_topic
    async def describe(self, topic: TopicName, subscription: str) -> dict[str, Any]:
        """Configuration and stats. Raises: SubscriptionNotFound; GatewayError."""
        config = await self._config(topic, subscription)
        stats = await self._admin.topic_stats(topic)
        sub_stats = stats.get("subscriptions", {}).get(subscription, {})
        earliest = sub_stats.get("earliestMsgPublishTimeInBacklog") or 0
        dead_letter_backlog = 0
        if config.max_deliveries is not None:
            try:
                dlq = await self._admin.topic_stats(config.dead_letters(topic, subscription))
                dlq_sub = dlq.get("subscriptions", {}).get(subscription, {})
                dead_letter_backlog = int(dlq_sub.get("msgBacklog", 0))
            except NotFound:
                pass
        return {
            "config": config,
            "backlog": int(sub_stats.get("msgBacklog", 0)),
            "unacked": int(sub_stats.get("unackedMessages", 0)),
            "oldest_unacked_age_ms": max(_now_ms() - earliest, 0) if earliest > 0 else None,
            "dead_letter_backlog": dead_letter_backlog,
            "consumers": len(sub_stats.get("consumers", [])),
        }

    @_on_topic
    async def delete(self, topic: TopicName, subscription: str) -> None:
        """Raises: SubscriptionNotFound; GatewayError."""
        await self._config(topic, subscription)
        await self._broadcast(Close(topic.path, subscription))
        try:
            await self._admin.delete_subscription(topic, subscription)
        except NotFound as exc:
            raise SubscriptionNotFound(f"subscription {subscription!r} does not exist") from exc

    @_on_topic
    async def seek(self, topic: TopicName, subscription: str, start: Start) -> None:
        """Move the subscription; what it acked after that point is delivered again.

        Raises: SubscriptionNotFound; GatewayError.
        """
        await self._config(topic, subscription)
        # Leases taken before the seek are void: every replica drops its consumer first.
        await self._broadcast(Close(topic.path, subscription))
        if start.kind == "earliest":
            await self._admin.reset_subscription_to_time(topic, subscription, 0)
        elif start.kind == "latest":
            await self._admin.skip_all(topic, subscription)
        elif start.kind == "time":
            assert start.time_ms is not None
            await self._admin.reset_subscription_to_time(topic, subscription, start.time_ms)
        else:
            assert start.after is not None
            for position in start.after.values():
                await self._admin.reset_subscription_after(topic, subscription, position)

    @_on_topic
    async def redrive(self, topic: TopicName, subscription: str, max_messages: int) -> int:
        """Move up to `max_messages` dead letters back to the topic, for this subscription.

        Raises: SubscriptionNotFound; GatewayError.
        """
        config = await self._config(topic, subscription)
        return await self._dead_letters.redrive(topic, subscription, config, max_messages)

    def consumers(self) -> int:
        return len(self._consumers)

    def leases(self) -> int:
        return sum(c.leases() for c in self._consumers.values())

    # --- pull and settle -------------------------------------------------------------------

    @_on_topic
    async def pull(
        self,
        topic: TopicName,
        subscription: str,
        *,
        max_messages: int,
        wait_s: float,
        ack_deadline_ms: int | None,
        stop: asyncio.Event | None = None,
    ) -> list[Pulled]:
        """Lease up to `max_messages`, waiting up to `wait_s` (or until `stop`) for a first.

        Raises: SubscriptionNotFound; GatewayError.
        """
        consumer = await self._consumer(topic, subscription)
        lease_ms = ack_deadline_ms or consumer.config.ack_deadline_ms
        leased = await consumer.pull(max_messages, wait_s, lease_ms, stop)
        return [
            Pulled(
                item.message,
                self._signer.sign(
                    Receipt(self._replica, item.message_id, self._cluster), topic, subscription
                ),
                item.delivery_attempt,
            )
            for item in leased
        ]

    @_on_topic
    async def ack(self, topic: TopicName, subscription: str, receipts: list[str]) -> Settled:
        """Acks through this replica go to Pulsar together; others go to their replica."""
        failed: list[tuple[str, ReceiptCode]] = []
        verified = await self._verified(topic, subscription, receipts, failed)
        here = [(text, r) for text, r in verified if r.replica == self._replica]
        errors = await self._ack_here(topic, subscription, [r.message_id for _, r in here])
        for (text, _), error in zip(here, errors, strict=True):
            if error is not None:
                failed.append((text, ReceiptCode.of(error)))
        for text, receipt in verified:
            if receipt.replica != self._replica:
                command = Ack(topic.path, subscription, receipt.message_id)
                await self._forward(text, receipt, command, failed)
        return Settled(len(receipts) - len(failed), failed)

    @_on_topic
    async def nack(
        self, topic: TopicName, subscription: str, receipts: list[str], delay_ms: int | None
    ) -> Settled:
        def command(receipt: Receipt) -> Nack:
            return Nack(topic.path, subscription, receipt.message_id, delay_ms)

        return await self._settle(topic, subscription, receipts, command)

    @_on_topic
    async def extend(
        self, topic: TopicName, subscription: str, receipts: list[str], ack_deadline_ms: int
    ) -> Settled:
        def command(receipt: Receipt) -> Extend:
            return Extend(topic.path, subscription, receipt.message_id, ack_deadline_ms)

        return await self._settle(topic, subscription, receipts, command)

    async def _settle(
        self,
        topic: TopicName,
        subscription: str,
        receipts: list[str],
        command_for: Callable[[Receipt], Nack | Extend],
    ) -> Settled:
        """Nack or extend here if this replica holds the lease, else at the one that does.

        If the leasing replica is gone, Pulsar has already redelivered its messages.
        """
        failed: list[tuple[str, ReceiptCode]] = []
        for text, receipt in await self._verified(topic, subscription, receipts, failed):
            command = command_for(receipt)
            if receipt.replica != self._replica:
                await self._forward(text, receipt, command, failed)
            elif not self._settle_here(command):
                failed.append((text, ReceiptCode.LEASE_EXPIRED))
        return Settled(len(receipts) - len(failed), failed)

    async def _verified(
        self,
        topic: TopicName,
        subscription: str,
        receipts: list[str],
        failed: list[tuple[str, ReceiptCode]],
    ) -> list[tuple[str, Receipt]]:
        """The receipts that are this subscription's; the others go to `failed`.

        Only replicas where workers pull have consumers: a replica that only settles would
        otherwise draw messages (and, on key_shared, key ranges) that nobody pulls there.

        Raises: SubscriptionNotFound.
        """
        if (topic.path, subscription) not in self._consumers:
            await self._config(topic, subscription)  # 404 for a subscription that is not there
        verified = []
        mine = (self._cluster, "") if self._home else (self._cluster,)
        for text in receipts:
            try:
                receipt = self._signer.verify(text, topic, subscription)
            except InvalidReceipt:
                failed.append((text, ReceiptCode.INVALID_RECEIPT))
                continue
            if receipt.cluster in mine:
                verified.append((text, receipt))
            else:  # routed here by a cluster name that is not configured
                failed.append((text, ReceiptCode.INVALID_RECEIPT))
        return verified

    async def _forward(
        self,
        text: str,
        receipt: Receipt,
        command: Command,
        failed: list[tuple[str, ReceiptCode]],
    ) -> None:
        self._metrics.queue_forwarded.labels(type(command).__name__.lower()).inc()
        try:
            await self._control.send(receipt.replica.hex(), command)
        except PULSAR_ERRORS as exc:
            failed.append((text, ReceiptCode.of(translate(exc))))

    def _settle_here(self, command: Nack | Extend) -> bool:
        """False when this replica no longer holds the lease."""
        consumer = self._consumers.get((command.topic, command.subscription))
        if consumer is None:
            return False
        if isinstance(command, Nack):
            return consumer.nack(command.message_id, command.delay_ms)
        return consumer.extend(command.message_id, command.ack_deadline_ms)

    async def _ack_here(
        self, topic: TopicName, subscription: str, message_ids: list[bytes]
    ) -> list[GatewayError | None]:
        """Each ack's error, or None."""
        if not message_ids:
            return []
        consumer = self._consumers.get((topic.path, subscription))
        try:
            if consumer is None:  # closed (idle, or a seek): ack the ids through a new one
                consumer = await self._consumer(topic, subscription)
            errors = await consumer.ack(message_ids)
        except PULSAR_ERRORS as exc:
            return [translate(exc)] * len(message_ids)
        return [None if e is None else translate(e) for e in errors]

    def _on_command(self, command: Command) -> None:
        """A command from another replica (or this one's own broadcast)."""
        key = (command.topic, command.subscription)
        match command:
            case Close():
                self._retire(key)
            case Ack():
                topic = TopicName.parse(*command.topic.split("/"))
                ids = [command.message_id]
                self._run(self._ack_here(topic, command.subscription, ids), "ack")
            case Nack() | Extend():
                self._settle_here(command)

    def _retire(self, key: ConsumerKey) -> None:
        consumer = self._consumers.pop(key, None)
        if consumer is not None:
            self._run(consumer.close(), "close")

    def _run(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        task = asyncio.create_task(work, name=f"queue-{what}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _broadcast(self, command: Close) -> None:
        self._on_command(command)
        try:
            await self._control.send(EVERY_REPLICA, command)
        except PULSAR_ERRORS as exc:
            log.warning("could not tell the other replicas to drop %s: %s", command, exc)

    # --- consumers -----------------------------------------------------------------------

    async def _config(self, topic: TopicName, subscription: str) -> SubscriptionConfig:
        """Raises: SubscriptionNotFound; GatewayError."""
        try:
            properties = await self._admin.subscription_properties(topic, subscription)
        except NotFound as exc:
            raise SubscriptionNotFound(
                f"subscription {subscription!r} on {topic} does not exist"
            ) from exc
        try:
            return SubscriptionConfig.from_properties(properties)
        except ValueError as exc:
            raise SubscriptionNotFound(
                f"subscription {subscription!r} is not configured for the gateway: {exc}"
            ) from exc

    async def _consumer(self, topic: TopicName, subscription: str) -> QueueConsumer:
        key = (topic.path, subscription)
        consumer = self._consumers.get(key)
        if consumer is not None:
            return consumer
        task = self._opening.get(key)
        if task is None:
            task = asyncio.create_task(self._open(topic, subscription))
            self._opening[key] = task
            task.add_done_callback(lambda _: self._opening.pop(key, None))
        return await asyncio.shield(task)

    async def _open(self, topic: TopicName, subscription: str) -> QueueConsumer:
        config = await self._config(topic, subscription)

        async def subscribe() -> pulsar.asyncio.Consumer:
            return await self._client.subscribe(
                topic.persistent,
                subscription,
                consumer_type=(
                    pulsar.ConsumerType.KeyShared
                    if config.type == "key_shared"
                    else pulsar.ConsumerType.Shared
                ),
                consumer_name=f"broker-gateway-{self._replica.hex()}",
                # The smallest queue Pulsar's client takes for partitioned topics and
                # batched entries: one entry (per partition) waits here ahead of pulls.
                receiver_queue_size=1,
                batch_index_ack_enabled=True,
                negative_ack_redelivery_delay_ms=10,
                # Pulsar mirrors the subscription's position to the clusters the topic
                # replicates to (snapshots every second), so a failover resumes near it.
                replicate_subscription_state_enabled=True,
            )

        async def dead_letter(config: SubscriptionConfig, message: Any, deliveries: int) -> None:
            await self._dead_letters.publish(topic, subscription, config, message, deliveries)
            self._metrics.queue_dead_lettered.labels(topic.tenant).inc()

        consumer = QueueConsumer(
            subscribe,
            config,
            dead_letter=dead_letter,
            skip=skip_for(subscription),
            handoff_s=self._handoff_s,
            on_lease_expired=self._metrics.queue_lease_expiries.inc,
        )
        consumer.start()
        self._consumers[(topic.path, subscription)] = consumer
        return consumer

    async def _maintain_forever(self) -> None:
        """Close idle consumers, hand back what waits for no pull, and take configuration
        changes up (made through any replica, a manifest, or Pulsar's own admin)."""
        refreshed = time.monotonic()
        while True:
            await asyncio.sleep(min(self._handoff_s, self._idle_timeout_s) / 4)
            now = time.monotonic()
            for key, consumer in list(self._consumers.items()):
                if consumer.idle and now - consumer.last_used > self._idle_timeout_s:
                    self._retire(key)
                    continue
                try:
                    await consumer.maintain()
                except PULSAR_ERRORS as exc:
                    log.warning("handing back messages on %s failed: %s", key, exc)
            if now - refreshed >= self._config_refresh_s:
                refreshed = now
                await self._refresh_configs()

    async def _refresh_configs(self) -> None:
        for key, consumer in list(self._consumers.items()):
            topic = TopicName.parse(*key[0].split("/"))
            try:
                config = await self._config(topic, key[1])
            except SubscriptionNotFound:
                self._retire(key)  # deleted, or no longer the gateway's
                continue
            except GatewayError as exc:
                log.warning("reading the configuration of %s failed: %s", key, exc.detail)
                continue
            if config.type != consumer.config.type:
                self._retire(key)  # the next pull opens a consumer of the new type
            elif config != consumer.config:
                consumer.config = config


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
