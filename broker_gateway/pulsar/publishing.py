"""Publishing: a batch of messages to one topic, each result reported on its own."""

import time
from typing import Any

import _pulsar

from broker_gateway.errors import BrokerTimeout, BrokerUnavailable, GatewayError
from broker_gateway.pulsar.bridge import Gathering, error_of, send_async_of
from broker_gateway.pulsar.codecs import Position, TopicName
from broker_gateway.pulsar.contracts import Contract
from broker_gateway.pulsar.errors import translate
from broker_gateway.pulsar.messages import OutgoingMessage, position_of
from broker_gateway.pulsar.producers import ProducerCache


def _build(message: OutgoingMessage) -> Any:
    builder = _pulsar.MessageBuilder()
    builder.content(message.payload)
    for name, value in message.properties.items():
        builder.property(name, value)
    if message.key is not None:
        builder.partition_key(message.key)
    if message.ordering_key is not None:
        builder.ordering_key(message.ordering_key)
    if message.event_time_ms is not None:
        builder.event_timestamp(message.event_time_ms)
    if message.deliver_at_ms is not None:
        builder.deliver_at(message.deliver_at_ms)
    elif message.deliver_after_ms is not None:
        builder.deliver_at(_now_ms() + message.deliver_after_ms)
    if message.sequence_id is not None:
        builder.sequence_id(message.sequence_id)
    return builder.build()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# What publishing one message came to: its Position once persisted, None when the broker
# dropped it as a duplicate of a sequence id it already has, else the error.
Outcome = Position | None | GatewayError


async def publish(
    producers: ProducerCache,
    topic: TopicName,
    messages: list[OutgoingMessage],
    *,
    producer_name: str | None = None,
    contract: Contract | None = None,
) -> list[Outcome]:
    """Send every message and report each one's outcome.

    Messages are handed to the producer in order before any result is awaited, so they share
    Pulsar batches and keep their order.

    Raises: GatewayError when the topic's producer cannot be had (nothing was sent).
    """
    try:
        entry = await producers.acquire(topic.persistent, producer_name, contract)
    except Exception as exc:
        raise _unavailable(translate(exc)) from exc
    sends = Gathering(len(messages))
    send_async = send_async_of(entry.producer)
    try:
        for index, message in enumerate(messages):
            send_async(_build(message), sends.callback(index))
        results = await sends.wait()
    finally:
        producers.release(entry)
    return [_outcome(result, message_id) for result, message_id in results]


async def send(producers: ProducerCache, topic: TopicName, message: OutgoingMessage) -> Position:
    """Publish one message and wait until it is persisted.

    Raises: GatewayError.
    """
    [outcome] = await publish(producers, topic, [message])
    if isinstance(outcome, GatewayError):
        raise outcome
    assert outcome is not None  # only named producers see duplicates
    return outcome


def _outcome(result: Any, message_id: Any) -> Outcome:
    error = error_of(result)
    if error is not None:
        return translate(error)
    position = position_of(message_id)
    return None if position.ledger < 0 else position


def _unavailable(error: GatewayError) -> GatewayError:
    """Not reaching the broker in time to create a producer is unavailability: nothing
    was sent, so a retry is safe (unlike a timeout on a send)."""
    if isinstance(error, BrokerTimeout):
        return BrokerUnavailable(f"the broker did not accept a producer in time ({error.detail})")
    return error
