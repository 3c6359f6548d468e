"""A control channel between gateway replicas, over one Pulsar topic.

A receipt names the replica that leased the message; an ack, nack or extension that
reaches another replica is forwarded here to the leasing one. If that replica is gone, the
command finds no one, which is safe: Pulsar has already redelivered its messages. `Close`
goes to every replica: drop your consumer of this subscription (a seek, a deletion).
"""

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pulsar
import pulsar.asyncio
from tenacity import AsyncRetrying, before_sleep_log, stop_never, wait_exponential

from broker_gateway.pulsar.bridge import read_next
from broker_gateway.pulsar.errors import PULSAR_ERRORS

log = logging.getLogger(__name__)

EVERY_REPLICA = "*"


@dataclass(frozen=True, slots=True)
class Ack:
    topic: str  # {tenant}/{namespace}/{topic}
    subscription: str
    message_id: bytes


@dataclass(frozen=True, slots=True)
class Nack:
    topic: str
    subscription: str
    message_id: bytes
    delay_ms: int | None


@dataclass(frozen=True, slots=True)
class Extend:
    topic: str
    subscription: str
    message_id: bytes
    ack_deadline_ms: int


@dataclass(frozen=True, slots=True)
class Close:
    topic: str
    subscription: str


Command = Ack | Nack | Extend | Close
Handler = Callable[[Command], None]


def encode(command: Command, to: str, sender: str) -> bytes:
    """The wire form: {"op", "topic", "subscription", "id", "ms", "to", "from"}."""
    fields: dict[str, Any] = {
        "topic": command.topic,
        "subscription": command.subscription,
        "to": to,
        "from": sender,
    }
    match command:
        case Ack():
            fields.update(op="ack", id=_b64(command.message_id), ms=None)
        case Nack():
            fields.update(op="nack", id=_b64(command.message_id), ms=command.delay_ms)
        case Extend():
            fields.update(op="extend", id=_b64(command.message_id), ms=command.ack_deadline_ms)
        case Close():
            fields.update(op="close")
    return orjson.dumps(fields)


def decode(data: bytes) -> tuple[str, Command] | None:
    """(addressee, command), or None for what is not a command of ours."""
    try:
        fields = orjson.loads(data)
        topic, subscription, op = fields["topic"], fields["subscription"], fields["op"]
        if op == "close":
            return fields["to"], Close(topic, subscription)
        message_id = base64.b64decode(fields["id"], validate=True)
        if op == "ack":
            return fields["to"], Ack(topic, subscription, message_id)
        if op == "nack":
            return fields["to"], Nack(topic, subscription, message_id, fields["ms"])
        if op == "extend":
            return fields["to"], Extend(topic, subscription, message_id, int(fields["ms"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error):
        pass
    return None


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


class ControlChannel:
    def __init__(self, client: pulsar.asyncio.Client, topic: str, replica: str) -> None:
        self._client = client
        self._topic = topic
        self.replica = replica
        self._handler: Handler | None = None
        self._producer: pulsar.asyncio.Producer | None = None
        self._opening = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self, handler: Handler) -> None:
        self._handler = handler
        self._task = asyncio.create_task(self._listen(), name="control-channel")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._producer is not None:
            await asyncio.gather(self._producer.close(), return_exceptions=True)

    async def send(self, to: str, command: Command) -> None:
        """Send a command to one replica, or to all with to=EVERY_REPLICA.

        Raises: PulsarException.
        """
        async with self._opening:  # one producer, however many sends race to make it
            if self._producer is None:
                self._producer = await self._client.create_producer(
                    self._topic, batching_enabled=True, batching_max_publish_delay_ms=1
                )
        await self._producer.send(encode(command, to, self.replica))

    async def _listen(self) -> None:
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.5, max=10),
            stop=stop_never,
            before_sleep=before_sleep_log(log, logging.WARNING),
        ):
            with attempt:
                reader = await self._client.create_reader(self._topic, pulsar.MessageId.latest)
                try:
                    while True:
                        self._dispatch(await read_next(reader))
                except PULSAR_ERRORS:
                    log.warning("control channel reader failed; commands may be missed")
                    raise
                finally:
                    await asyncio.shield(reader.close())

    def _dispatch(self, message: Any) -> None:
        decoded = decode(message.data())
        if decoded is None or self._handler is None:
            return
        to, command = decoded
        if to in (self.replica, EVERY_REPLICA):
            self._handler(command)
