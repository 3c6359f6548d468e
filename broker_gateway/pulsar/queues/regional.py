"""Work queues across regions: each cluster's QueueService, and which one a call goes to.

Pulls, and the subscription's configuration, go to the region serving the topic (see
pulsar.regions): home, or while home is down a peer the topic replicates to, where Pulsar's
replicated subscription has kept the position. An ack, nack or extension goes to the
cluster its receipt was leased in, whichever serves the topic now: a message is settled
where it came from.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from broker_gateway.pulsar.codecs import Start, TopicName
from broker_gateway.pulsar.queues.config import SubscriptionConfig
from broker_gateway.pulsar.queues.receipts import cluster_of
from broker_gateway.pulsar.queues.service import Pulled, QueueService, Settled
from broker_gateway.pulsar.regions import Region, Regions


class Queues:
    def __init__(self, regions: Regions, make: Callable[[Region], QueueService]) -> None:
        """`make(region)`: the QueueService of one region (made when first needed)."""
        self._regions = regions
        self._make = make
        self._services: dict[str, QueueService] = {}

    def start(self) -> None:
        self._in(self._regions.home)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._services.values()))

    def consumers(self) -> int:
        """Subscriptions this replica consumes now, in every region."""
        return sum(s.consumers() for s in self._services.values())

    def leases(self) -> int:
        """Messages leased to workers through this replica now."""
        return sum(s.leases() for s in self._services.values())

    def _in(self, region: Region) -> QueueService:
        service = self._services.get(region.name)
        if service is None:
            service = self._services[region.name] = self._make(region)
            service.start()
        return service

    async def _serving(self, topic: TopicName) -> QueueService:
        return self._in(await self._regions.serving(topic))

    # --- configuration, in the region serving the topic -----------------------------------

    async def configure(
        self, topic: TopicName, subscription: str, config: SubscriptionConfig
    ) -> bool:
        return await (await self._serving(topic)).configure(topic, subscription, config)

    async def describe(self, topic: TopicName, subscription: str) -> dict[str, Any]:
        return await (await self._serving(topic)).describe(topic, subscription)

    async def delete(self, topic: TopicName, subscription: str) -> None:
        await (await self._serving(topic)).delete(topic, subscription)

    async def seek(self, topic: TopicName, subscription: str, start: Start) -> None:
        await (await self._serving(topic)).seek(topic, subscription, start)

    async def redrive(self, topic: TopicName, subscription: str, max_messages: int) -> int:
        return await (await self._serving(topic)).redrive(topic, subscription, max_messages)

    async def pull(
        self,
        topic: TopicName,
        subscription: str,
        *,
        max_messages: int,
        wait_s: float,
        ack_deadline_ms: int | None,
        stop: asyncio.Event | None = None,
    ) -> list[Pulled]:
        service = await self._serving(topic)
        return await service.pull(
            topic,
            subscription,
            max_messages=max_messages,
            wait_s=wait_s,
            ack_deadline_ms=ack_deadline_ms,
            stop=stop,
        )

    # --- settles, in the cluster each receipt was leased in --------------------------------

    async def ack(self, topic: TopicName, subscription: str, receipts: list[str]) -> Settled:
        return await self._settle(
            receipts, lambda service, mine: service.ack(topic, subscription, mine)
        )

    async def nack(
        self, topic: TopicName, subscription: str, receipts: list[str], delay_ms: int | None
    ) -> Settled:
        return await self._settle(
            receipts, lambda service, mine: service.nack(topic, subscription, mine, delay_ms)
        )

    async def extend(
        self, topic: TopicName, subscription: str, receipts: list[str], ack_deadline_ms: int
    ) -> Settled:
        return await self._settle(
            receipts,
            lambda service, mine: service.extend(topic, subscription, mine, ack_deadline_ms),
        )

    async def _settle(
        self,
        receipts: list[str],
        settle: Callable[[QueueService, list[str]], Awaitable[Settled]],
    ) -> Settled:
        home = self._regions.home.name
        if len(self._regions.all) == 1:
            return await settle(self._in(self._regions.home), receipts)
        by_cluster: dict[str, list[str]] = {}
        for text in receipts:
            cluster = cluster_of(text)
            # Unknown or unreadable: home's service finds it invalid.
            name = cluster if cluster in self._regions.all else home
            by_cluster.setdefault(name, []).append(text)
        if len(by_cluster) == 1:  # the usual case: one cluster
            [(name, mine)] = by_cluster.items()
            return await settle(self._in(self._regions.all[name]), mine)
        results = [
            await settle(self._in(self._regions.all[name]), mine)
            for name, mine in by_cluster.items()
        ]
        return Settled(sum(r.succeeded for r in results), [f for r in results for f in r.failed])
