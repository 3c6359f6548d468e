"""Regions: the gateway's Pulsar clusters, and which one serves a topic now.

The first of GATEWAY_CLUSTERS is home: it serves every topic while it is up. A topic that
replicates (Pulsar geo-replication, declared by manifests: the topic's replication clusters,
else its namespace's) to other configured clusters is served by the first of them that is
up while home is down; a topic that does not replicate to a peer is served by home alone,
up or down: its data never goes to a cluster the manifests did not allow.

Each region is up or down, circuit-breaker style:

    up ──(an operation cannot reach it, and its health check fails too)──► down
    down ──(health checks pass without a break for `healthy_for_s`)──► up

Every region that is up is checked every `failover_probe_s`, and operations on a replicated
topic wait at most `detect_s` on a region before it is checked.
A region that goes down again within FLAP_WINDOW_S of coming up must stay healthy twice as
long the next time (up to MAX_HEALTHY_FOR_S), so a flapping cluster does not bounce
traffic back and forth.

Readiness (/readyz) asks a region's health only when nothing showed it answering within
READY_EVIDENCE_S: a persisted publish or a passing health check does. A busy replica is
thus ready by its own traffic, and its probes add no calls to Pulsar that would wait
behind the load.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

import pulsar
import pulsar.asyncio

from broker_gateway.errors import GatewayError, NotFound
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.producers import ProducerCache
from broker_gateway.settings import Cluster, Settings

log = logging.getLogger(__name__)

FLAP_WINDOW_S: Final = 60.0
MAX_HEALTHY_FOR_S: Final = 300.0
# A namespace's replication clusters are looked up again after this long.
POLICY_REFRESH_S: Final = 30.0
# A region that answered within this long is ready without being asked again.
READY_EVIDENCE_S: Final = 2.0


def connect(cluster: Cluster, settings: Settings) -> pulsar.asyncio.Client:
    """A client of `cluster` (it connects on first use)."""
    return pulsar.asyncio.Client(
        cluster.service_url,
        authentication=None
        if cluster.token is None
        else pulsar.AuthenticationToken(cluster.token.get_secret_value()),
        operation_timeout_seconds=int(settings.pulsar_operation_timeout_s),
        connection_timeout_ms=int(settings.pulsar_connect_timeout_s * 1000),
        io_threads=settings.pulsar_io_threads,
        listener_name=cluster.listener_name,
        # Filtered in C++: a Python logger costs the GIL on every one of the client's
        # log calls, its per-message debug lines included (a fifth of publish CPU).
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
    )


class Region:
    """One cluster as the data plane uses it: its client, admin and producers."""

    def __init__(self, cluster: Cluster, settings: Settings, admin: PulsarAdmin) -> None:
        self.name = cluster.name
        self.client = connect(cluster, settings)
        self.admin = admin
        self.producers = ProducerCache(
            self.client,
            settings.producer_idle_timeout_s,
            settings.named_producer_idle_timeout_s,
            send_timeout_s=settings.pulsar_send_timeout_s,
        )
        self.up = True
        self.since = float("-inf")  # when it last went up or down
        # When it last went down (epoch ms): a reader coming back to it resumes from before
        # then (see PulsarService._open_reader).
        self.went_down_ms: int | None = None
        # How long health checks must pass before it takes traffic back (doubles on flaps).
        self.healthy_for_s = settings.failover_healthy_for_s
        self.answered_at = float("-inf")  # when it last answered (monotonic)
        self._moved = asyncio.Event()

    def answered(self) -> None:
        """It just did what it was asked: evidence of readiness."""
        self.answered_at = time.monotonic()

    def moved(self) -> asyncio.Event:
        """Set when this region next goes down or comes back up."""
        return self._moved

    def _set(self, up: bool) -> None:
        self.up = up
        self.since = time.monotonic()
        if not up:
            self.went_down_ms = time.time_ns() // 1_000_000
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    def __repr__(self) -> str:
        return f"Region({self.name}, {'up' if self.up else 'down'})"


class Regions:
    def __init__(
        self,
        settings: Settings,
        admins: dict[str, PulsarAdmin],
        on_change: Callable[[Region], None] = lambda region: None,
    ) -> None:
        self._settings = settings
        self.all = {c.name: Region(c, settings, admins[c.name]) for c in settings.clusters}
        self.home = self.all[settings.data_cluster.name]
        self.detect_s = settings.failover_detect_s
        self._on_change = on_change
        # topic path -> (the peers it replicates to, in configured order; fetched at)
        self._peers: dict[str, tuple[tuple[Region, ...], float]] = {}
        self._checks: dict[str, asyncio.Task[bool]] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        for region in self.all.values():
            region.producers.start()
        if len(self.all) > 1:  # one region has nowhere to fail over to
            self._probes["*"] = asyncio.create_task(self._watch_forever(), name="regions")

    async def close(self) -> None:
        for task in [*self._checks.values(), *self._probes.values()]:
            task.cancel()
        await asyncio.gather(*self._checks.values(), *self._probes.values(), return_exceptions=True)
        for region in self.all.values():
            await region.producers.close()
            await region.client.close()

    # --- routing ---------------------------------------------------------------------------

    def route(self, topic: TopicName) -> Region:
        """The region serving `topic` now, from what is known (see peers())."""
        if self.home.up:
            return self.home
        known = self._peers.get(topic.path)
        for peer in () if known is None else known[0]:
            if peer.up:
                return peer
        return self.home

    async def serving(self, topic: TopicName) -> Region:
        """The region serving `topic` now."""
        if self.home.up:
            return self.home
        await self.peers(topic)
        return self.route(topic)

    async def peers(self, topic: TopicName) -> tuple[Region, ...]:
        """The other configured clusters `topic` replicates to (its own replication
        clusters, else its namespace's); none when it does not, or when that cannot be
        known (then it never fails over)."""
        if len(self.all) == 1:
            return ()
        known = self._peers.get(topic.path)
        if known is not None and time.monotonic() - known[1] < POLICY_REFRESH_S:
            return known[0]
        try:
            peers = await self._replicated_to(topic)
        except GatewayError as exc:
            if known is not None:
                return known[0]  # kept until a lookup succeeds
            log.warning("replication of %s unknown, no failover for it: %s", topic, exc.detail)
            return ()
        self._peers[topic.path] = (peers, time.monotonic())
        return peers

    async def _replicated_to(self, topic: TopicName) -> tuple[Region, ...]:
        """Home's word on the topic's replication clusters; while home is down, a peer's,
        where the peer's own policy names both home and itself."""
        try:
            names = await self._replication_clusters(self.home, topic)
        except GatewayError:
            if self.home.up:
                raise
            found: list[Region] = []
            for peer in self._others():
                try:
                    names = await self._replication_clusters(peer, topic)
                except GatewayError:
                    continue
                if self.home.name in names and peer.name in names:
                    found.append(peer)
            return tuple(found)
        return tuple(r for r in self._others() if r.name in names)

    async def _replication_clusters(self, region: Region, topic: TopicName) -> set[str]:
        """The topic's replication clusters as `region` has them."""
        timeout_s = self._settings.readiness_timeout_s
        for path in (
            f"/admin/v2/persistent/{topic.path}/replication",
            f"/admin/v2/namespaces/{topic.tenant}/{topic.namespace}/replication",
        ):
            try:
                names = await region.admin.request("GET", path, timeout_s=timeout_s)
            except NotFound:
                continue  # no such topic (yet): its namespace's policy
            if names:
                return set(names)
        return set()

    def _others(self) -> list[Region]:
        return [r for r in self.all.values() if r is not self.home]

    # --- health ----------------------------------------------------------------------------

    async def confirm_down(self, region: Region) -> bool:
        """An operation could not reach `region` in time: check its health (one check at a
        time per region); True when it is down (then its producers are closed, failing
        what they still hold, and it is probed until it is back)."""
        if not region.up:
            return True
        task = self._checks.get(region.name)
        if task is None:
            task = asyncio.create_task(self._check(region), name=f"check {region.name}")
            self._checks[region.name] = task
            task.add_done_callback(lambda _: self._checks.pop(region.name, None))
        return await asyncio.shield(task)

    async def _check(self, region: Region) -> bool:
        problem = await self._health(region)
        if problem is None or not region.up:
            return not region.up
        if time.monotonic() - region.since < FLAP_WINDOW_S:  # it flaps
            region.healthy_for_s = min(region.healthy_for_s * 2, MAX_HEALTHY_FOR_S)
        else:
            region.healthy_for_s = self._settings.failover_healthy_for_s
        log.warning(
            "cluster %s is down (%s): replicated topics fail over; back after %.0f s healthy",
            region.name,
            problem,
            region.healthy_for_s,
        )
        region._set(up=False)
        self._on_change(region)
        # Pending sends fail now, not at their send timeout: they are sent again elsewhere.
        await region.producers.close_all()
        self._probes[region.name] = asyncio.create_task(
            self._probe_until_back(region), name=f"probe {region.name}"
        )
        return True

    async def _watch_forever(self) -> None:
        """Check the regions that are up, so a failure is found without traffic too (a
        live stream of a dead cluster would otherwise only send heartbeats)."""
        while True:
            await asyncio.sleep(self._settings.failover_probe_s)
            for region in [r for r in self.all.values() if r.up]:
                if await self._health(region) is not None:
                    await self.confirm_down(region)  # checked once more: then it is down

    async def readiness(self) -> dict[str, str | None]:
        """Each region's readiness problem, or None where it is ready."""

        async def problem(region: Region) -> str | None:
            if time.monotonic() - region.answered_at < READY_EVIDENCE_S:
                return None
            return await self._health(region)

        regions = list(self.all.values())
        problems = await asyncio.gather(*(problem(r) for r in regions))
        return {r.name: p for r, p in zip(regions, problems, strict=True)}

    async def _health(self, region: Region) -> str | None:
        try:
            await region.admin.ready(self._settings.readiness_timeout_s)
        except GatewayError as exc:
            return exc.detail
        region.answered()
        return None

    async def _probe_until_back(self, region: Region) -> None:
        healthy_since: float | None = None
        while True:
            await asyncio.sleep(self._settings.failover_probe_s)
            if await self._health(region) is not None:
                healthy_since = None
                continue
            now = time.monotonic()
            healthy_since = healthy_since or now
            if now - healthy_since >= region.healthy_for_s:
                break
        log.warning("cluster %s is back: its topics return to it", region.name)
        region._set(up=True)
        self._on_change(region)
        self._probes.pop(region.name, None)
