"""Dead letters: a message out of deliveries goes to the subscription's dead-letter topic,
carrying where it came from; redrive moves dead letters back for that subscription alone."""

from collections.abc import Callable
from typing import Any, Final

import pulsar
import pulsar.asyncio

from broker_gateway.pulsar import publishing
from broker_gateway.pulsar.bridge import receive
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.messages import OutgoingMessage, position_of
from broker_gateway.pulsar.producers import ProducerCache
from broker_gateway.pulsar.queues.config import SubscriptionConfig

# Properties a dead-lettered message carries (Pulsar's own names, plus the count).
DLQ_PROPERTIES: Final = ("REAL_TOPIC", "REAL_SUBSCRIPTION", "ORIGIN_MESSAGE_ID", "DELIVERY_COUNT")
# A redriven message is for one subscription; the topic's others skip it.
REDRIVE_FOR: Final = "broker-gateway.redrive-for"


class DeadLetters:
    def __init__(self, client: pulsar.asyncio.Client, producers: ProducerCache) -> None:
        self._client = client
        self._producers = producers

    async def publish(
        self,
        topic: TopicName,
        subscription: str,
        config: SubscriptionConfig,
        message: Any,
        deliveries: int,
    ) -> None:
        """Raises: GatewayError (nothing was published)."""
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
        )

    async def redrive(
        self, topic: TopicName, subscription: str, config: SubscriptionConfig, max_messages: int
    ) -> int:
        """Move up to `max_messages` dead letters back to the topic, for this subscription:
        each is published again, then acked on the dead-letter topic.

        Raises: PulsarException; GatewayError.
        """
        consumer = await self._client.subscribe(
            config.dead_letters(topic, subscription).persistent,
            subscription,
            consumer_type=pulsar.ConsumerType.Shared,
            # A subscription made here (not by configure) must see what is there already.
            initial_position=pulsar.InitialPosition.Earliest,
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
                )
                await consumer.acknowledge(message.message_id())
                moved += 1
        finally:
            await consumer.close()
        return moved


def skip_for(subscription: str) -> Callable[[Any], bool]:
    """Whether a message is a redriven one meant for another subscription."""

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
