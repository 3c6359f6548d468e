"""A partition's messages are read and streamed in Pulsar's order, even when pulsar-client
hands a waiting receive a message ahead of one it is queueing (pure logic, with a client
reader that replays that interleaving; against a real broker: tests/integration/test_read.py)."""

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pulsar

from broker_gateway.pulsar.codecs import EARLIEST, NON_PARTITIONED, TopicName
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
