"""Stateless reads: a non-durable reader per request, so nobody's cursor moves."""

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import pulsar
import pulsar.asyncio

from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.pulsar.bridge import callback_for
from broker_gateway.pulsar.codecs import EARLIEST, Position, Start, TopicName, encode_cursor
from broker_gateway.pulsar.messages import position_of, render, to_message_id

log = logging.getLogger(__name__)

_NON_PARTITIONED = -1


@dataclass(frozen=True, slots=True)
class Page:
    messages: list[dict[str, Any]]
    next: str


async def read_page(
    client: pulsar.asyncio.Client,
    admin: PulsarAdmin,
    topic: TopicName,
    start: Start,
    *,
    limit: int,
    wait_s: float,
    base64_only: bool = False,
) -> Page:
    """Up to `limit` messages from `start`, waiting up to `wait_s` for the first one.

    Raises: TopicNotFound (latest/time on a missing topic); PulsarException from the client.
    """
    # The position this page continues from if it returns nothing. For `latest` and `time`
    # it is read before the reader starts, so a message published meanwhile is not skipped.
    after: Position
    if start.kind == "after":
        assert start.after is not None
        after = start.after.get(_NON_PARTITIONED, EARLIEST)
    elif start.kind in ("latest", "time"):
        after = await admin.last_position(topic)
    else:
        after = EARLIEST

    start_id = (
        pulsar.MessageId.earliest if start.kind in ("earliest", "time") else to_message_id(after)
    )
    reader = await client.create_reader(
        topic.persistent,
        start_id,
        receiver_queue_size=min(limit, 1000),
        start_message_id_inclusive=False,
    )
    messages: list[dict[str, Any]] = []
    try:
        if start.kind == "time":
            assert start.time_ms is not None
            await reader.seek(start.time_ms)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while len(messages) < limit:
            if await _has_message_available(reader):
                message = await _read_next(reader)
            else:
                remaining = deadline - loop.time()
                if messages or remaining <= 0:
                    break
                message = await _read_next(reader, timeout_s=remaining)
                if message is None:
                    break
            messages.append(render(message, base64_only=base64_only))
            after = position_of(message.message_id())
    finally:
        await _close_quietly(reader)
    return Page(messages, encode_cursor({_NON_PARTITIONED: after}))


async def _has_message_available(reader: pulsar.asyncio.Reader) -> bool:
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    reader._reader.has_message_available_async(callback_for(future))
    return await future


async def _read_next(reader: pulsar.asyncio.Reader, timeout_s: float | None = None) -> Any:
    """The next _pulsar.Message, or None when `timeout_s` passes first.

    A message that arrives after the deadline is left behind: the reader is closed right
    after and the page's cursor does not cover it, so the next read returns it.
    """
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    reader._reader.read_next_async(callback_for(future))
    try:
        return await asyncio.wait_for(future, timeout_s)
    except TimeoutError:
        return None


async def _close_quietly(reader: pulsar.asyncio.Reader) -> None:
    try:
        await asyncio.shield(reader.close())
    except Exception as exc:
        log.warning("closing reader on %s failed: %s", reader.topic(), exc)
