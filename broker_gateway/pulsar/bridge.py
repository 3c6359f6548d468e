"""Callbacks from pulsar-client's I/O threads, settled safely on the event loop.

pulsar.asyncio sets its futures unconditionally, which fails noisily once a waiter has
given up (a read deadline, a client that disconnected). These helpers let a late result
land quietly on a future nobody waits for any more.
"""

import asyncio
from collections.abc import Callable
from typing import Any

import _pulsar
import pulsar.asyncio


def callback_for(future: "asyncio.Future[Any]") -> Callable[[Any, Any], None]:
    """A (result, value) callback that settles `future` from any thread."""
    loop = future.get_loop()

    def settle(result: Any, value: Any) -> None:
        if future.done():
            return
        if result == _pulsar.Result.Ok:
            future.set_result(value)
        else:
            future.set_exception(pulsar.asyncio.PulsarException(result))

    def callback(result: Any, value: Any = None) -> None:
        loop.call_soon_threadsafe(settle, result, value)

    return callback


async def has_message_available(reader: pulsar.asyncio.Reader) -> bool:
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    reader._reader.has_message_available_async(callback_for(future))
    return await future


async def read_next(reader: pulsar.asyncio.Reader) -> Any:
    """The reader's next _pulsar.Message."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    reader._reader.read_next_async(callback_for(future))
    return await future


async def receive(consumer: pulsar.asyncio.Consumer, timeout_s: float) -> Any:
    """The consumer's next _pulsar.Message, or None after `timeout_s`.

    A message arriving after that stays unacknowledged: Pulsar redelivers it once the
    consumer closes.
    """
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    consumer._consumer.receive_async(callback_for(future))
    try:
        return await asyncio.wait_for(future, timeout_s)
    except TimeoutError:
        return None
