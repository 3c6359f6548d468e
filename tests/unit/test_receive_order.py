"""A partition's messages are handed out in Pulsar's order, even when pulsar-client hands a
waiting receive a message ahead of one it is queueing: by reads and streams, and by a
subscription's pulls. Pure logic, with a client reader and consumer that replay the
client's interleavings; against a real broker: tests/integration/test_read.py and
test_queue_configuration.py (key_shared order)."""

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pulsar
import pytest

from broker_gateway.pulsar.codecs import EARLIEST, NON_PARTITIONED, TopicName
from broker_gateway.pulsar.queues.consumer import _Receiver
from broker_gateway.pulsar.reading import TopicReader, _PartitionReader


class MessageId:
    def __init__(self, entry: int, batch_index: int) -> None:
        self._entry = entry
        self._batch_index = batch_index

    def ledger_id(self) -> int:
        return 7

    def entry_id(self) -> int:
        return self._entry

    def batch_index(self) -> int:
        return self._batch_index

    def partition(self) -> int:
        return NON_PARTITIONED


class Message:
    def __init__(self, batch_index: int) -> None:
        self.n = batch_index
        self._id = MessageId(3, batch_index)

    def message_id(self) -> MessageId:
        return self._id

    def publish_timestamp(self) -> int:
        return 1_000  # one batch entry: one publish time


class RacingClientReader:
    """The client's reader (`_pulsar.Reader`) as it behaves when a batch arrives while a
    receive waits: ConsumerImpl::executeNotifyCallback finds no waiting receive for message
    3 and, before it queues 3, a receive starts waiting; 4 then goes to that receive (on
    another thread), while 3, and what follows, go to the queue."""

    def __init__(self, stored: bool) -> None:
        self.queue: deque[Message] = deque()
        self.arrived = threading.Event()
        self._stored = stored  # whether the broker says more is stored, the queue empty

    def read_next(self, timeout_ms: int) -> Message:
        if not self.queue:
            raise pulsar.Timeout("empty")  # what the client raises
        return self.queue.popleft()

    def has_message_available_async(self, callback: Callable[[Any, Any], None]) -> None:
        callback(pulsar.Result.Ok, bool(self.queue) or (self._stored and not self.arrived.is_set()))

    def read_next_async(self, callback: Callable[[Any, Any], None]) -> None:
        def batch_arrives() -> None:
            self.queue.append(Message(3))
            callback(pulsar.Result.Ok, Message(4))
            self.queue.extend(Message(i) for i in (5, 6))
            self.arrived.set()

        threading.Thread(target=batch_arrives).start()


class Reader:
    """pulsar.asyncio.Reader's shape, around the client's reader."""

    def __init__(self, stored: bool) -> None:
        self._reader = RacingClientReader(stored)

    def topic(self) -> str:
        return "persistent://public/default/t"

    async def close(self) -> None:
        pass


def handed_out(read: Callable[[TopicReader], Any], *, stored: bool) -> list[int]:
    async def main() -> list[int]:
        reader = Reader(stored)
        topic = TopicReader(
            TopicName("public", "default", "t"),
            [_PartitionReader(NON_PARTITIONED, reader, EARLIEST)],
            "east",
            0,
        )
        deliveries = await read(topic)
        await asyncio.to_thread(reader._reader.arrived.wait, 5)
        deliveries += await topic.read(10, 0)
        return [d.message.n for d in deliveries]

    return asyncio.run(main())


def test_a_message_queued_behind_a_waiting_receive_is_handed_out_first_from_a_page() -> None:
    # A page finds the queue empty, asks whether more is stored (yes), and waits for it.
    assert handed_out(lambda reader: reader.read(2, 0), stored=True) == [3, 4, 5, 6]


def test_a_message_queued_behind_a_waiting_receive_is_handed_out_first_from_a_stream() -> None:
    # A stream finds nothing stored yet, and waits for the next arrival.
    assert handed_out(lambda reader: reader.read(2, 5), stored=False) == [3, 4, 5, 6]


class ClientConsumer:
    """The client's consumer (`_pulsar.Consumer`) as ConsumerImpl behaves: a receive is
    answered at once, on the caller's thread, from the queue; else it waits. A message that
    arrives goes to the receive waiting longest, through the listener thread; else, once
    the lock is released (`window` runs there), to the queue."""

    def __init__(self) -> None:
        self.queue: deque[Message] = deque()
        self.waiting: deque[Callable[[Any, Any], None]] = deque()
        self.listener = ThreadPoolExecutor(1)

    def receive(self, timeout_ms: int) -> Message:
        if not self.queue:
            raise pulsar.Timeout("empty")
        return self.queue.popleft()

    def receive_async(self, callback: Callable[[Any, Any], None]) -> None:
        if self.queue:
            callback(pulsar.Result.Ok, self.queue.popleft())
        else:
            self.waiting.append(callback)

    def arrive(self, n: int, window: Callable[[], object] = lambda: None) -> None:
        if self.waiting:
            self.listener.submit(self.waiting.popleft(), pulsar.Result.Ok, Message(n))
            return
        window()
        self.queue.append(Message(n))

    @contextmanager
    def listener_busy(self) -> Iterator[None]:
        """Messages handed to waiting receives stay on their way meanwhile."""
        free = threading.Event()
        self.listener.submit(free.wait, 5)
        try:
            yield
        finally:
            free.set()


class Consumer:
    """pulsar.asyncio.Consumer's shape, around the client's consumer."""

    def __init__(self) -> None:
        self._consumer = ClientConsumer()


def pulled(test: Callable[[_Receiver, ClientConsumer], Any]) -> list[int]:
    """What `test` sets up, then taken as pulls take it: the earliest arrived, else a
    receive waited on."""

    async def main() -> list[int]:
        consumer = Consumer()
        receiver = _Receiver(consumer)
        try:
            await test(receiver, consumer._consumer)
            numbers: list[int] = []
            while len(numbers) < 3:
                message = receiver.take_arrived()
                if message is None:
                    await asyncio.wait_for(receiver.receive(), 5)
                    continue
                numbers.append(message.n)
            return numbers
        finally:
            consumer._consumer.listener.shutdown()

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("waiting_in_the_race", "asked_after"),
    [(1, False), (1, True), (2, False)],
    ids=["queued", "answered-to-a-later-receive", "two-receives-waiting"],
)
def test_a_pull_takes_a_message_the_client_queued_behind_a_waiting_receive_first(
    waiting_in_the_race: int, asked_after: bool
) -> None:
    async def race(receiver: _Receiver, client: ClientConsumer) -> None:
        waiting: list[asyncio.Future[Any]] = []
        client.arrive(
            3, window=lambda: waiting.extend(receiver.receive() for _ in range(waiting_in_the_race))
        )
        if asked_after:  # another pull's receive: the client answers it at once, with 3
            assert receiver.receive().result().n == 3
        client.arrive(4)  # to a receive that started waiting before 3 was queued
        client.arrive(5)
        await asyncio.gather(*waiting)

    assert pulled(race) == [3, 4, 5]


def test_a_message_answered_at_once_waits_for_an_earlier_one_on_its_way() -> None:
    # No race: 3 went to the waiting receive; 4, queued, answers the next receive at once,
    # before 3 reaches the event loop.
    async def in_flight(receiver: _Receiver, client: ClientConsumer) -> None:
        waiting = receiver.receive()
        with client.listener_busy():
            client.arrive(3)
            client.arrive(4)
            assert receiver.receive().result().n == 4
            assert receiver.take_arrived() is None
        await waiting
        client.arrive(5)

    assert pulled(in_flight) == [3, 4, 5]
