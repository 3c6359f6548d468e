"""A control channel between gateway replicas, over one Pulsar topic.

A receipt names the replica that leased the message; an ack, nack or extension that
reaches another replica is forwarded here to the leasing one. If that replica is gone, the
command finds no one, which is safe: Pulsar has already redelivered its messages.
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
import pulsar
import pulsar.asyncio
from tenacity import AsyncRetrying, before_sleep_log, stop_never, wait_exponential

from broker_gateway.pulsar.bridge import read_next

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], None]


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

    async def send(self, to: str, command: dict[str, Any]) -> None:
        """Send a command to one replica, or to all with to="*".

        Raises: PulsarException.
        """
        async with self._opening:  # one producer, however many sends race to make it
            if self._producer is None:
                self._producer = await self._client.create_producer(
                    self._topic, batching_enabled=True, batching_max_publish_delay_ms=1
                )
        await self._producer.send(orjson.dumps({**command, "to": to, "from": self.replica}))

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
                except Exception:
                    log.exception("control channel reader failed; commands may be missed")
                    raise
                finally:
                    await asyncio.shield(reader.close())

    def _dispatch(self, message: Any) -> None:
        try:
            command = orjson.loads(message.data())
        except orjson.JSONDecodeError:
            return
        if command.get("to") in (self.replica, "*") and self._handler is not None:
            try:
                self._handler(command)
            except Exception:
                log.exception("control command %s failed", command.get("op"))
