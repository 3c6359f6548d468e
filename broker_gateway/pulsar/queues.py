"""Work queues on durable Pulsar subscriptions: configure, pull, ack, nack, extend, seek,
dead letters. No per-client state: a subscription's configuration lives in its Pulsar
subscription properties, and a receipt says everything another replica needs.
"""

import asyncio
import base64
import logging
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import pulsar
import pulsar.asyncio

from broker_gateway.errors import NotFound, SubscriptionNotFound, problem_for
from broker_gateway.pulsar import publishing
from broker_gateway.pulsar.admin import Conflict, PulsarAdmin
from broker_gateway.pulsar.bridge import receive
from broker_gateway.pulsar.codecs import Start, TopicName
from broker_gateway.pulsar.control import ControlChannel
from broker_gateway.pulsar.errors import translate
from broker_gateway.pulsar.leases import QueueConsumer
from broker_gateway.pulsar.messages import OutgoingMessage, position_of
from broker_gateway.pulsar.producers import ProducerCache
from broker_gateway.pulsar.receipts import InvalidReceipt, Receipt, ReceiptSigner
from broker_gateway.pulsar.subscriptions import SubscriptionConfig

log = logging.getLogger(__name__)

# Properties a dead-lettered message carries (Pulsar's own names, plus the count).
DLQ_PROPERTIES = ("REAL_TOPIC", "REAL_SUBSCRIPTION", "ORIGIN_MESSAGE_ID", "DELIVERY_COUNT")
# A redriven message is for one subscription; the topic's others skip it.
REDRIVE_FOR = "broker-gateway.redrive-for"

ConsumerKey = tuple[str, str]  # (topic path, subscription)


@dataclass(frozen=True, slots=True)
class Pulled:
    message: Any  # _pulsar.Message
    receipt: str
    delivery_attempt: int


@dataclass(frozen=True, slots=True)
class Outcome:
    succeeded: int
    failed: list[dict[str, str]]


class QueueService:
    def __init__(
        self,
        client: pulsar.asyncio.Client,
        admin: PulsarAdmin,
        producers: ProducerCache,
        signer: ReceiptSigner,
        control_topic: str,
        *,
        idle_timeout_s: float,
        handoff_s: float,
        retry_after_s: int,
    ) -> None:
        self._client = client
        self._admin = admin
        self._producers = producers
        self._signer = signer
        self._replica = os.urandom(8)
        self._control = ControlChannel(client, control_topic, self._replica.hex())
        self._idle_timeout_s = idle_timeout_s
        self._handoff_s = handoff_s
        self._retry_after_s = retry_after_s
        self._consumers: dict[ConsumerKey, QueueConsumer] = {}
        self._opening: dict[ConsumerKey, asyncio.Task[QueueConsumer]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self._control.start(self._on_command)
        self._reaper = asyncio.create_task(self._close_idle_forever(), name="queue-reaper")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        await self._control.close()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self._consumers.values()))
        self._consumers.clear()

    # --- configuration -------------------------------------------------------------------

    async def configure(
        self, topic: TopicName, subscription: str, config: SubscriptionConfig
    ) -> bool:
        """Create or update the subscription; True when it was created.

        Raises: GatewayError (TopicNotFound when the namespace does not create topics, ...).
        """
        properties = config.to_properties()
        created = False
        try:
            await self._admin.subscription_properties(topic, subscription)
        except NotFound:
            created = await self._create(topic, subscription, config, properties)
        if not created:
            await self._admin.set_subscription_properties(topic, subscription, properties)
        await self._ensure_dead_letter_subscription(topic, subscription, config)
        # Every replica picks the new configuration up (and a changed type needs new consumers).
        await self._broadcast("close", topic, subscription)
        return created

    async def _create(
        self,
        topic: TopicName,
        subscription: str,
        config: SubscriptionConfig,
        properties: dict[str, str],
    ) -> bool:
        earliest = config.initial_position == "earliest"
        try:
            await self._admin.create_subscription(
                topic, subscription, earliest=earliest, properties=properties
            )
        except Conflict:
            return False  # created meanwhile by another request
        except NotFound:
            # No topic yet: creating a reader makes one if the namespace allows it
            # (else TopicNotFound), the same rule publishing follows.
            reader = await self._client.create_reader(topic.persistent, pulsar.MessageId.latest)
            await reader.close()
            await self._admin.create_subscription(
                topic, subscription, earliest=earliest, properties=properties
            )
        return True

    async def _ensure_dead_letter_subscription(
        self, topic: TopicName, subscription: str, config: SubscriptionConfig
    ) -> None:
        """The dead-letter topic gets a subscription of the same name: its backlog is the
        dead-letter count, and redrive consumes from it."""
        if config.max_deliveries is None:
            return
        dead_letters = config.dead_letters(topic, subscription)
        try:
            await self._admin.ensure_topic(dead_letters, retention_minutes=-1)
        except Conflict:
            pass
        try:
            await self._admin.create_subscription(
                dead_letters, subscription, earliest=True, properties={}
            )
        except Conflict:
            pass

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

    async def delete(self, topic: TopicName, subscription: str) -> None:
        """Raises: SubscriptionNotFound; GatewayError."""
        await self._config(topic, subscription)
        await self._broadcast("close", topic, subscription)
        try:
            await self._admin.delete_subscription(topic, subscription)
        except NotFound as exc:
            raise SubscriptionNotFound(f"subscription {subscription!r} does not exist") from exc

    async def seek(self, topic: TopicName, subscription: str, start: Start) -> None:
        """Move the subscription; what it acked after that point is delivered again.

        Raises: SubscriptionNotFound; GatewayError.
        """
        await self._config(topic, subscription)
        # Leases taken before the seek are void: every replica drops its consumer first.
        await self._broadcast("close", topic, subscription)
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

    # --- pull and settle -------------------------------------------------------------------

    async def pull(
        self,
        topic: TopicName,
        subscription: str,
        *,
        max_messages: int,
        wait_s: float,
        ack_deadline_ms: int | None,
    ) -> list[Pulled]:
        """Raises: SubscriptionNotFound; GatewayError."""
        consumer = await self._consumer(topic, subscription)
        lease_ms = ack_deadline_ms or consumer.config.ack_deadline_ms
        leased = await consumer.pull(max_messages, wait_s, lease_ms)
        return [
            Pulled(
                item.message,
                self._signer.sign(Receipt(self._replica, item.message_id), topic, subscription),
                item.delivery_attempt,
            )
            for item in leased
        ]

    async def ack(self, topic: TopicName, subscription: str, receipts: list[str]) -> Outcome:
        return await self._settle(topic, subscription, receipts, "ack", None)

    async def nack(
        self, topic: TopicName, subscription: str, receipts: list[str], delay_ms: int | None
    ) -> Outcome:
        return await self._settle(topic, subscription, receipts, "nack", delay_ms)

    async def extend(
        self, topic: TopicName, subscription: str, receipts: list[str], ack_deadline_ms: int
    ) -> Outcome:
        return await self._settle(topic, subscription, receipts, "extend", ack_deadline_ms)

    async def _settle(
        self, topic: TopicName, subscription: str, receipts: list[str], op: str, ms: int | None
    ) -> Outcome:
        """Apply `op` here if this replica holds the lease, else send it to the one that does.

        Only replicas where workers pull have consumers: a replica that only settles would
        otherwise draw messages (and, on key_shared, key ranges) that nobody pulls there.
        If the leasing replica is gone, Pulsar has already redelivered its messages.
        """
        if (topic.path, subscription) not in self._consumers:
            await self._config(topic, subscription)  # 404 for a subscription that is not there
        succeeded, failed = 0, list[dict[str, str]]()
        verified = self._verify(topic, subscription, receipts, failed)
        if op == "ack":  # this replica's acks go to Pulsar together
            here = [(text, r) for text, r in verified if r.replica == self._replica]
            errors = await self._ack_here(topic, subscription, [r.message_id for _, r in here])
            for (text, _), error in zip(here, errors, strict=True):
                if error is None:
                    succeeded += 1
                else:
                    failed.append({"receipt": text, "code": self._code(error)})
            verified = [(text, r) for text, r in verified if r.replica != self._replica]
        for text, receipt in verified:
            try:
                if receipt.replica == self._replica:
                    applied = await self._apply_here(
                        topic, subscription, op, receipt.message_id, ms
                    )
                else:
                    await self._tell_owner(op, topic, subscription, receipt, ms)
                    applied = True
            except Exception as exc:
                failed.append({"receipt": text, "code": self._code(exc)})
                continue
            if applied:
                succeeded += 1
            else:
                failed.append({"receipt": text, "code": "lease_expired"})
        return Outcome(succeeded, failed)

    async def _apply_here(
        self, topic: TopicName, subscription: str, op: str, message_id: bytes, ms: int | None
    ) -> bool:
        """Raises: PulsarException (an ack Pulsar refused)."""
        if op == "ack":
            [error] = await self._ack_here(topic, subscription, [message_id])
            if error is not None:
                raise error
            return True
        consumer = self._consumers.get((topic.path, subscription))
        if consumer is None:
            return False
        if op == "nack":
            return consumer.nack(message_id, ms)
        assert ms is not None
        return consumer.extend(message_id, ms)

    async def _ack_here(
        self, topic: TopicName, subscription: str, message_ids: list[bytes]
    ) -> list[Exception | None]:
        """Each ack's error (a PulsarException), or None."""
        if not message_ids:
            return []
        consumer = self._consumers.get((topic.path, subscription))
        if consumer is None:  # closed (idle, or a seek): ack the ids through a new one
            try:
                consumer = await self._consumer(topic, subscription)
            except Exception as exc:
                return [exc] * len(message_ids)
        return await consumer.ack(message_ids)

    async def _tell_owner(
        self, op: str, topic: TopicName, subscription: str, receipt: Receipt, ms: int | None
    ) -> None:
        """Forward `op` to the replica holding the lease.

        Raises: PulsarException.
        """
        command = {
            "op": op,
            "topic": topic.path,
            "subscription": subscription,
            "id": base64.b64encode(receipt.message_id).decode(),
            "ms": ms,
        }
        await self._control.send(receipt.replica.hex(), command)

    def _verify(
        self,
        topic: TopicName,
        subscription: str,
        receipts: list[str],
        failed: list[dict[str, str]],
    ) -> list[tuple[str, Receipt]]:
        verified = []
        for text in receipts:
            try:
                verified.append((text, self._signer.verify(text, topic, subscription)))
            except InvalidReceipt:
                failed.append({"receipt": text, "code": "invalid_receipt"})
        return verified

    def _on_command(self, command: dict[str, Any]) -> None:
        key = (command["topic"], command["subscription"])
        if command["op"] == "close":
            consumer = self._consumers.pop(key, None)
            if consumer is not None:
                self._background(consumer.close())
        elif command["op"] in ("ack", "nack", "extend"):
            self._background(
                self._apply_here(
                    TopicName.parse(*command["topic"].split("/")),
                    command["subscription"],
                    command["op"],
                    base64.b64decode(command["id"]),
                    command["ms"],
                )
            )

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        task.add_done_callback(_log_failure)

    async def _broadcast(self, op: str, topic: TopicName, subscription: str) -> None:
        self._on_command({"op": op, "topic": topic.path, "subscription": subscription})
        try:
            await self._control.send(
                "*", {"op": op, "topic": topic.path, "subscription": subscription}
            )
        except Exception as exc:
            log.warning("could not tell other replicas to %s %s: %s", op, subscription, exc)

    # --- dead letters --------------------------------------------------------------------

    async def redrive(self, topic: TopicName, subscription: str, max_messages: int) -> int:
        """Move up to `max_messages` dead letters back to the topic, for this subscription.

        Raises: SubscriptionNotFound; GatewayError.
        """
        config = await self._config(topic, subscription)
        dead_letters = config.dead_letters(topic, subscription)
        consumer = await self._client.subscribe(
            dead_letters.persistent,
            subscription,
            consumer_type=pulsar.ConsumerType.Shared,
            receiver_queue_size=min(max_messages, 1000),
            batch_index_ack_enabled=True,
        )
        moved = 0
        try:
            while moved < max_messages:
                message = await receive(consumer, 0.5)
                if message is None:
                    break
                properties = {
                    k: v for k, v in message.properties().items() if k not in DLQ_PROPERTIES
                }
                properties[REDRIVE_FOR] = subscription
                await publishing.send(
                    self._producers,
                    topic,
                    _copy(message, properties),
                    retry_after_s=self._retry_after_s,
                )
                await consumer.acknowledge(message.message_id())
                moved += 1
        finally:
            await consumer.close()
        return moved

    async def _publish_dead_letter(
        self,
        topic: TopicName,
        subscription: str,
        config: SubscriptionConfig,
        message: Any,
        deliveries: int,
    ) -> None:
        """Raises: GatewayError."""
        properties = {
            **message.properties(),
            "REAL_TOPIC": topic.persistent,
            "REAL_SUBSCRIPTION": subscription,
            "ORIGIN_MESSAGE_ID": str(position_of(message.message_id())),
            "DELIVERY_COUNT": str(deliveries),
        }
        await publishing.send(
            self._producers,
            config.dead_letters(topic, subscription),
            _copy(message, properties),
            retry_after_s=self._retry_after_s,
        )

    # --- consumers -----------------------------------------------------------------------

    async def _config(self, topic: TopicName, subscription: str) -> SubscriptionConfig:
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
            )

        async def dead_letter(message: Any, deliveries: int) -> None:
            await self._publish_dead_letter(topic, subscription, config, message, deliveries)

        consumer = QueueConsumer(
            subscribe,
            config,
            dead_letter=dead_letter,
            skip=_skip_for(subscription),
            handoff_s=self._handoff_s,
        )
        consumer.start()
        self._consumers[(topic.path, subscription)] = consumer
        return consumer

    async def _close_idle_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self._handoff_s, self._idle_timeout_s) / 4)
            now = time.monotonic()
            for key, consumer in list(self._consumers.items()):
                if consumer.idle and now - consumer.last_used > self._idle_timeout_s:
                    self._consumers.pop(key, None)
                    await consumer.close()
                    continue
                try:
                    await consumer.maintain()
                except Exception as exc:
                    log.warning("handing back messages on %s failed: %s", key, exc)

    def _code(self, exc: BaseException) -> str:
        return problem_for(translate(exc, self._retry_after_s)).code


def _log_failure(task: "asyncio.Task[Any]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a forwarded queue command failed: %s", task.exception())


def _skip_for(subscription: str) -> Any:
    def skip(message: Any) -> bool:
        target = message.properties().get(REDRIVE_FOR)
        return target is not None and target != subscription

    return skip


def _copy(message: Any, properties: dict[str, str]) -> OutgoingMessage:
    return OutgoingMessage(
        payload=message.data(),
        key=message.partition_key() or None,
        ordering_key=message.ordering_key() or None,
        properties=properties,
        event_time_ms=message.event_timestamp() or None,
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
