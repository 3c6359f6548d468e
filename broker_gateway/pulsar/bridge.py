"""Callbacks from pulsar-client's I/O threads, settled safely on the event loop.

pulsar.asyncio sets its futures unconditionally, which fails noisily once a waiter has
given up (a read deadline, a client that disconnected). These helpers let a late result
land quietly on a future nobody waits for any more.

The client calls back at once, on the calling thread, when it has the answer already (a
message waiting in a consumer's or reader's queue): such a future is settled there and
then, so the caller's `await` does not go round the event loop once per message.
"""

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import _pulsar
import pulsar.asyncio

_OK = _pulsar.Result.Ok.value


def callback_for(future: "asyncio.Future[Any]") -> Callable[[Any, Any], None]:
    """A (result, value) callback that settles `future` from any thread."""
    loop = future.get_loop()

    def settle(result: Any, value: Any) -> None:
        if future.done():
            return
        if result.value == _OK:
            future.set_result(value)
        else:
            future.set_exception(pulsar.asyncio.PulsarException(result))

    loop_thread = threading.get_ident()

    def callback(result: Any, value: Any = None) -> None:
        if threading.get_ident() == loop_thread:
            settle(result, value)
        else:
            loop.call_soon_threadsafe(settle, result, value)

    return callback


class Gathering:
    """The (result, value) callbacks of `size` operations, settled on the loop all at once.

    One wake-up of the event loop for the lot, instead of a future and a thread-safe call
    per operation: what a batch of sends costs is then mostly the client's own.
    """

    __slots__ = ("_future", "_loop_thread", "_settled", "_size", "results")

    def __init__(self, size: int) -> None:
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loop_thread = threading.get_ident()
        self._size = size
        self._settled = itertools.count(1)  # next() on it is atomic, from any thread
        # (result, value) per operation, in the order the callbacks were made.
        self.results: list[tuple[Any, Any]] = [(None, None)] * size

    def callback(self, index: int) -> Callable[[Any, Any], None]:
        """The callback of operation `index`."""
        return partial(self._settle, index)

    def _settle(self, index: int, result: Any, value: Any = None) -> None:
        self.results[index] = (result, value)
        if next(self._settled) == self._size:
            if threading.get_ident() == self._loop_thread:
                self._wake()
            else:
                self._future.get_loop().call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    async def wait(
        self,
        patience_s: float | None = None,
        give_up: Callable[[], Awaitable[bool]] | None = None,
    ) -> list[tuple[Any, Any]]:
        """Each operation's (result, value); result is a _pulsar.Result.

        With `patience_s`, `give_up()` is asked after that long: if it says so, the results
        so far come back, None as the result of each operation not settled yet.
        """
        if self._size:
            if patience_s is None or give_up is None:
                await self._future
            else:
                done, _ = await asyncio.wait([self._future], timeout=patience_s)
                if not done and await give_up():
                    return list(self.results)
                await self._future
        return self.results


def error_of(result: Any) -> Exception | None:
    """The exception for a _pulsar.Result, None for Ok."""
    # .value: comparing the enum members themselves costs several times more.
    return None if result.value == _OK else pulsar.asyncio.PulsarException(result)


async def has_message_available(reader: pulsar.asyncio.Reader) -> bool:
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    reader._reader.has_message_available_async(callback_for(future))
    return await future


def poll(reader: pulsar.asyncio.Reader) -> Any:
    """The next _pulsar.Message the reader has queued already, or None: never waits.

    A plain call, no future and no callback: about 1 µs a message where the asynchronous
    path, which goes round the event loop, costs ten times that.
    """
    try:
        return reader._reader.read_next(0)
    except pulsar.Timeout:
        return None


def poll_consumer(consumer: pulsar.asyncio.Consumer) -> Any:
    """The next _pulsar.Message the consumer has queued already, or None: never waits."""
    try:
        return consumer._consumer.receive(0)
    except pulsar.PulsarException:  # Timeout: none queued; AlreadyClosed: none will be
        return None


def read_next_async(reader: pulsar.asyncio.Reader, future: "asyncio.Future[Any]") -> None:
    """Ask for the reader's next _pulsar.Message, settled on `future`."""
    reader._reader.read_next_async(callback_for(future))


async def read_next(reader: pulsar.asyncio.Reader) -> Any:
    """The reader's next _pulsar.Message."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    reader._reader.read_next_async(callback_for(future))
    return await future


def receive_async(consumer: pulsar.asyncio.Consumer, future: "asyncio.Future[Any]") -> None:
    """Ask for the consumer's next _pulsar.Message, settled on `future`."""
    consumer._consumer.receive_async(callback_for(future))


def acknowledge_async(
    consumer: pulsar.asyncio.Consumer, target: Any, callback: Callable[[Any, Any], None]
) -> None:
    """Acknowledge a _pulsar.Message or a MessageId; `callback(result, None)` follows."""
    consumer._consumer.acknowledge_async(target, callback)


def negative_acknowledge(consumer: pulsar.asyncio.Consumer, message: Any) -> None:
    """Pulsar delivers the message again (to any consumer) and counts the delivery."""
    consumer._consumer.negative_acknowledge(message)


def send_async_of(producer: pulsar.asyncio.Producer) -> Callable[[Any, Any], None]:
    """The producer's own send_async(message, callback), bound once: the hot path."""
    send: Callable[[Any, Any], None] = producer._producer.send_async
    return send


async def receive(consumer: pulsar.asyncio.Consumer, timeout_s: float) -> Any:
    """The consumer's next _pulsar.Message, or None after `timeout_s`.

    A message arriving after that stays unacknowledged: Pulsar redelivers it once the
    consumer closes.
    """
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    consumer._consumer.receive_async(callback_for(future))
    try:
        if future.done():  # it was queued in the client already
            return future.result()
        return await asyncio.wait_for(future, timeout_s)
    except TimeoutError:
        return None
