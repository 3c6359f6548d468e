"""Publishing: a batch of messages to one topic, each result reported on its own."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

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


class Persisted(NamedTuple):
    """Where a message was persisted: its position, in this cluster."""

    position: Position
    cluster: str


# What publishing one message came to: where it was persisted, None when the broker
# dropped it as a duplicate of a sequence id it already has, else the error.
Outcome = Persisted | None | GatewayError

# Asked once an operation has waited its patience out: True gives up on it.
GiveUp = Callable[[], Awaitable[bool]]


async def publish(
    producers: ProducerCache,
    topic: TopicName,
    messages: list[OutgoingMessage],
    *,
    cluster: str,
    producer_name: str | None = None,
    contract: Contract | None = None,
    patience_s: float | None = None,
    give_up: GiveUp | None = None,
) -> list[Outcome]:
    """Send every message to `cluster` (the producers' cluster) and report each one's
    outcome.

    Messages are handed to the producer in order before any result is awaited, so they share
    Pulsar batches and keep their order. With `patience_s`, `give_up()` is asked once the
    producer or the results have taken that long: if it says so, the messages not persisted
    yet come back as BrokerUnavailable (some may still be persisted: in flight already).

    Raises: GatewayError when the topic's producer cannot be had (nothing was sent).
    """
    try:
        entry = await _patiently(
            producers.acquire(topic.persistent, producer_name, contract),
            patience_s,
            give_up,
            abandoned=producers.release,
        )
    except Exception as exc:
        raise _unavailable(translate(exc)) from exc
    sends = Gathering(len(messages))
    send_async = send_async_of(entry.producer)
    try:
        for index, message in enumerate(messages):
            send_async(_build(message), sends.callback(index))
        results = await sends.wait(patience_s, give_up)
    finally:
        producers.release(entry)
    return [_outcome(result, message_id, cluster) for result, message_id in results]


async def send(producers: ProducerCache, topic: TopicName, message: OutgoingMessage) -> Position:
    """Publish one message and wait until it is persisted; its position in the producers'
    cluster.

    Raises: GatewayError.
    """
    [outcome] = await publish(producers, topic, [message], cluster="")
    if isinstance(outcome, GatewayError):
        raise outcome
    assert outcome is not None  # only named producers see duplicates
    return outcome.position


def _outcome(result: Any, message_id: Any, cluster: str) -> Outcome:
    if result is None:  # given up on before it settled
        return BrokerUnavailable(f"cluster {cluster} did not persist it in time")
    error = error_of(result)
    if error is not None:
        return translate(error)
    position = position_of(message_id)
    return None if position.ledger < 0 else Persisted(position, cluster)


async def _patiently(
    operation: Awaitable[Any],
    patience_s: float | None,
    give_up: GiveUp | None,
    abandoned: Callable[[Any], None],
) -> Any:
    """`operation`'s result; after `patience_s`, BrokerUnavailable if `give_up()` says so
    (the operation goes on, and `abandoned` gets its result)."""
    if patience_s is None or give_up is None:
        return await operation
    task = asyncio.ensure_future(operation)
    done, _ = await asyncio.wait([task], timeout=patience_s)
    if not done and await give_up():

        def drop(finished: "asyncio.Future[Any]") -> None:
            if not finished.cancelled() and finished.exception() is None:
                abandoned(finished.result())

        task.add_done_callback(drop)
        raise BrokerUnavailable("the cluster did not answer in time")
    return await task


def _unavailable(error: GatewayError) -> GatewayError:
    """Not reaching the broker in time to create a producer is unavailability: nothing
    was sent, so a retry is safe (unlike a timeout on a send)."""
    if isinstance(error, BrokerTimeout):
        return BrokerUnavailable(f"the broker did not accept a producer in time ({error.detail})")
    return error
