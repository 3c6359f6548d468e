"""Stateless reads: non-durable readers, one per partition, so nobody's cursor moves.

A TopicReader serves a paged read (open, one batch, close) and a live stream (open, batch
after batch, close on disconnect) alike. Its position is a cursor: per partition, the last
message handed out. A message read from Pulsar but not handed out (a page's limit reached,
a deadline passed) is not in the cursor, so the next read returns it.
"""

import asyncio
import heapq
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pulsar
import pulsar.asyncio

from broker_gateway.errors import TopicNotFound
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.pulsar.bridge import has_message_available, poll, read_next, read_next_async
from broker_gateway.pulsar.codecs import (
    EARLIEST,
    NON_PARTITIONED,
    Cursor,
    Position,
    Start,
    TopicName,
)
from broker_gateway.pulsar.messages import position_of, to_message_id

log = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: one is built per message, and frozen is slower
class Delivery:
    """A message handed out, with the cursor that continues right after it."""

    message: Any  # _pulsar.Message
    position: Position
    cursor: str | None  # None unless asked for: a page needs only its last one


class _PartitionReader:
    """One partition's reader, with the messages it has read but not handed out."""

    def __init__(self, partition: int, reader: pulsar.asyncio.Reader, after: Position) -> None:
        self.partition = partition
        self.reader = reader
        self.after = after
        self.buffer: list[Any] = []
        self._pending: asyncio.Future[Any] | None = None

    async def fill(self, limit: int) -> None:
        """Buffer what the partition has available now, up to `limit` messages."""
        while len(self.buffer) < limit:
            if self._pending is not None:
                if not self._pending.done():
                    return
                self._take_pending()
                continue
            message = poll(self.reader)
            if message is None:
                # The client's queue is empty: ask the broker (a round trip) whether more
                # is stored, and wait for it only if so.
                if not await has_message_available(self.reader):
                    return
                self._buffer_waited(await read_next(self.reader))
                continue
            self.buffer.append(message)

    def arrival(self) -> "asyncio.Future[Any]":
        """A future that completes when the next message arrives (it is kept, not lost)."""
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_future()
            read_next_async(self.reader, self._pending)
        return self._pending

    def _take_pending(self) -> None:
        assert self._pending is not None
        future, self._pending = self._pending, None
        self._buffer_waited(future.result())

    def _buffer_waited(self, message: Any) -> None:
        """Buffer a message a waiting receive got, in Pulsar's order.

        pulsar-client can hand a waiting receive the message after one it is queueing that
        instant (ConsumerImpl::executeNotifyCallback finds no receive waiting for message
        n, and queues n only after releasing its lock; a receive that starts waiting in
        between gets n + 1). n is queued before n + 1 is handed over, so it is first in the
        queue now: polled, it goes back before n + 1.
        """
        queued = poll(self.reader)
        if queued is None:
            self.buffer.append(message)
        elif position_of(queued.message_id()) < position_of(message.message_id()):
            self.buffer += (queued, message)
        else:
            self.buffer += (message, queued)

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        try:
            await asyncio.shield(self.reader.close())
        except pulsar.asyncio.PulsarException as exc:
            log.warning("closing reader on %s failed: %s", self.reader.topic(), exc)


class TopicReader:
    """Reads a topic, partitioned or not, from a start position."""

    def __init__(
        self,
        topic: TopicName,
        partitions: list[_PartitionReader],
        cluster: str,
        time_ms: int,
        skip_before_ms: int | None = None,
    ) -> None:
        self._partitions = partitions
        self.cluster = cluster
        self.opened_at = time.monotonic()
        self._cursor = Cursor(topic, {p.partition: p.after for p in partitions}, cluster, time_ms)
        # Messages published before this are passed over, not handed out (see Start).
        self._skip_before_ms = skip_before_ms

    @classmethod
    async def open(
        cls,
        client: pulsar.asyncio.Client,
        admin: PulsarAdmin,
        topic: TopicName,
        start: Start,
        *,
        queue_size: int,
        cluster: str = "",
    ) -> "TopicReader":
        """A reader of `topic` in `cluster` (the one `client` and `admin` reach).

        Raises: TopicNotFound; PulsarException from the client.
        """
        began_ms = time.time_ns() // 1_000_000
        names = await client.get_topic_partitions(topic.persistent)
        partitions = [_partition_index(name) for name in names]
        # For `latest` and `time`, the end of each partition is read before the readers
        # start: it is where the cursor stands if nothing is handed out, so a message
        # published meanwhile is not skipped.
        if start.kind in ("latest", "time"):
            ends = await asyncio.gather(*(_end_of(admin, topic, p) for p in partitions))
            afters = dict(zip(partitions, ends, strict=True))
        elif start.kind == "after":
            assert start.after is not None
            afters = {p: start.after.get(p, EARLIEST) for p in partitions}
        else:
            afters = dict.fromkeys(partitions, EARLIEST)

        async def open_partition(name: str, partition: int) -> _PartitionReader:
            after = afters[partition]
            start_id = (
                pulsar.MessageId.earliest
                if start.kind == "time" or after == EARLIEST
                else to_message_id(after)
            )
            reader = await client.create_reader(
                name,
                start_id,
                receiver_queue_size=queue_size,
                start_message_id_inclusive=False,
            )
            if start.kind == "time":
                assert start.time_ms is not None
                await reader.seek(start.time_ms)
            return _PartitionReader(partition, reader, after)

        opened = await asyncio.gather(
            *(open_partition(n, p) for n, p in zip(names, partitions, strict=True)),
            return_exceptions=True,
        )
        readers = [r for r in opened if isinstance(r, _PartitionReader)]
        failure = next((r for r in opened if isinstance(r, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(r.close() for r in readers))
            raise failure
        # Where a cursor resumes in another cluster if no message is handed out.
        time_ms = {"earliest": 0, "latest": began_ms}.get(start.kind, start.time_ms or 0)
        if start.skip_before_ms is not None:
            time_ms = max(time_ms, start.skip_before_ms)
        return cls(topic, readers, cluster, time_ms, start.skip_before_ms)

    @property
    def cursor(self) -> str:
        return str(self._cursor)

    async def read(
        self,
        limit: int,
        wait_s: float,
        stop: asyncio.Event | None = None,
        *,
        cursors: bool = False,
    ) -> list[Delivery]:
        """Up to `limit` messages, oldest publish time first across partitions.

        Waits up to `wait_s` for a first message when none is available, or until `stop`.
        With `cursors`, each delivery carries the cursor right after it.
        """
        await self._fill(limit)
        if not any(p.buffer for p in self._partitions) and wait_s > 0:
            arrivals = [p.arrival() for p in self._partitions]
            stopping = [] if stop is None else [asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(
                    [*arrivals, *stopping], timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in stopping:
                    task.cancel()
            await self._fill(limit)
        deliveries, passed_over = self._take(limit, cursors)
        while not deliveries and passed_over:  # all of it was passed over: read on
            await self._fill(limit)
            deliveries, passed_over = self._take(limit, cursors)
        return deliveries

    async def _fill(self, limit: int) -> None:
        await asyncio.gather(*(p.fill(limit) for p in self._partitions))

    def _take(self, limit: int, cursors: bool) -> tuple[list[Delivery], bool]:
        """Hand out up to `limit` buffered messages, merged by publish time, and whether
        some were passed over (published before `_skip_before_ms`: for as long as this
        reader lives, since they may come after later ones, replicated from a peer where
        the client saw them).

        Within a partition the order is Pulsar's; the cursor moves past each one handed out
        or passed over.
        """
        buffered = [i for i, p in enumerate(self._partitions) if p.buffer]
        if len(buffered) == 1:  # nothing to merge
            [i] = buffered
            merged: Iterable[tuple[int, int, Any]] = (
                (m.publish_timestamp(), i, m) for m in self._partitions[i].buffer
            )
        else:
            streams = [
                [(m.publish_timestamp(), i, m) for m in self._partitions[i].buffer]
                for i in buffered
            ]
            merged = heapq.merge(*streams, key=lambda item: (item[0], item[1]))
        deliveries: list[Delivery] = []
        taken = [0] * len(self._partitions)
        cursor = self._cursor
        skip_before_ms = self._skip_before_ms
        passed_over = False
        for published_ms, index, message in merged:
            if len(deliveries) == limit:
                break
            taken[index] += 1
            position = position_of(message.message_id())
            if skip_before_ms is not None and published_ms < skip_before_ms:
                cursor.move(self._partitions[index].partition, position, cursor.time_ms)
                passed_over = True
                continue
            cursor.move(self._partitions[index].partition, position, published_ms)
            deliveries.append(Delivery(message, position, str(cursor) if cursors else None))
        for partition_reader, count in zip(self._partitions, taken, strict=True):
            del partition_reader.buffer[:count]
        return deliveries, passed_over

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self._partitions))


async def _end_of(admin: PulsarAdmin, topic: TopicName, partition: int) -> Position:
    """The last message's position; a topic not created yet ends where it starts (its
    reader then creates it, or fails, as the namespace's auto-creation policy says)."""
    try:
        return await admin.last_position(topic, partition)
    except TopicNotFound:
        return EARLIEST


def _partition_index(name: str) -> int:
    _, sep, suffix = name.rpartition("-partition-")
    return int(suffix) if sep and suffix.isdigit() else NON_PARTITIONED


class ReaderCache:
    """Readers of paged reads, kept for the page after them.

    A page's reader is kept under the page's `next` cursor; a read from exactly that cursor
    takes it, with the messages it has read ahead, instead of opening a reader and seeking.
    Two reads from one cursor at once: the second opens its own. At most `capacity`
    readers, the least recently kept closed first; each closed after `idle_s` unused, and
    none reused once older than MAX_AGE_S, so partitions added to a topic are read by a
    client that pages without a pause too (a new reader finds them).
    """

    MAX_AGE_S = 60.0

    def __init__(self, capacity: int, idle_s: float) -> None:
        self._capacity = capacity
        self._idle_s = idle_s
        # (topic path, cursor) -> (reader, kept at), oldest first.
        self._kept: dict[tuple[str, str], tuple[TopicReader, float]] = {}
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._close_idle_forever(), name="reader-reaper")

    async def take(self, topic: TopicName, cursor: str) -> TopicReader | None:
        kept = self._kept.pop((topic.path, cursor), None)
        if kept is None:
            return None
        reader = kept[0]
        if time.monotonic() - reader.opened_at > self.MAX_AGE_S:
            await reader.close()
            return None
        return reader

    async def keep(self, topic: TopicName, reader: TopicReader) -> None:
        """Keep `reader` for a read from its cursor, or close it when none may be kept."""
        if self._capacity == 0:
            await reader.close()
            return
        key = (topic.path, reader.cursor)
        replaced = self._kept.pop(key, None)
        self._kept[key] = (reader, time.monotonic())
        closing = [] if replaced is None else [replaced[0]]
        while len(self._kept) > self._capacity:
            closing.append(self._kept.pop(next(iter(self._kept)))[0])
        await asyncio.gather(*(r.close() for r in closing))

    async def _close_idle_forever(self) -> None:
        while True:
            await asyncio.sleep(max(self._idle_s / 4, 0.25))
            oldest = time.monotonic() - self._idle_s
            idle = [key for key, (_, kept_at) in self._kept.items() if kept_at < oldest]
            await asyncio.gather(*(self._kept.pop(key)[0].close() for key in idle))

    def __len__(self) -> int:
        return len(self._kept)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        kept, self._kept = self._kept, {}
        await asyncio.gather(*(reader.close() for reader, _ in kept.values()))
