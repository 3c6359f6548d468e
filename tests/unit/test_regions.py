"""Which cluster serves a topic, and the breaker that moves it: pure routing logic, with an
admin API that answers as told (against real clusters: tests/faults/test_region.py)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from broker_gateway.errors import BrokerUnavailable, NotFound
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.regions import Regions
from broker_gateway.settings import Settings

REPLICATED = TopicName("acme", "orders", "created")
RESIDENT = TopicName("acme", "local", "created")
OVERRIDDEN = TopicName("acme", "orders", "east-only")


class Admin:
    """Answers readiness and replication policies as the test says."""

    def __init__(self, name: str, policies: dict[str, list[str]]) -> None:
        self.name = name
        self.policies = policies
        self.healthy = True
        self.checks = 0

    async def ready(self, timeout_s: float) -> None:
        self.checks += 1
        if not self.healthy:
            raise BrokerUnavailable(f"cluster {self.name} is unreachable")

    async def request(self, method: str, path: str, **_: Any) -> Any:
        if not self.healthy:
            raise BrokerUnavailable(f"cluster {self.name} is unreachable")
        key = path.removeprefix("/admin/v2/").removesuffix("/replication")
        if key in self.policies:
            return self.policies[key]
        raise NotFound(path)

    async def close(self) -> None:
        pass


POLICIES = {
    "namespaces/acme/orders": ["east", "west"],
    "namespaces/acme/local": ["east"],
    "persistent/acme/orders/east-only": ["east"],
}


def with_regions(
    test: Callable[[Regions], Awaitable[None]],
) -> Callable[[], None]:
    """Run `test` with east (home) and west, on an event loop of its own."""

    def run() -> None:
        async def main() -> None:
            settings = Settings(
                failover_probe_s=0.01, failover_healthy_for_s=0.05, readiness_timeout_s=0.1
            )
            admins: Any = {name: Admin(name, POLICIES) for name in ("east", "west")}
            regions = Regions(settings, admins)
            try:
                await test(regions)
            finally:
                await regions.close()

        asyncio.run(main())

    run.__name__ = test.__name__
    return run


@with_regions
async def test_home_serves_every_topic_while_it_is_up(regions: Regions) -> None:
    assert [r.name for r in await regions.peers(REPLICATED)] == ["west"]
    assert await regions.peers(RESIDENT) == ()
    assert (await regions.serving(REPLICATED)).name == "east"
    assert (await regions.serving(RESIDENT)).name == "east"


@with_regions
async def test_a_replicated_topic_moves_to_its_peer_while_home_is_down(regions: Regions) -> None:
    await regions.peers(REPLICATED)
    regions.home.admin.healthy = False  # type: ignore[attr-defined]
    assert await regions.confirm_down(regions.home)
    assert (await regions.serving(REPLICATED)).name == "west"
    assert (await regions.serving(RESIDENT)).name == "east"  # never elsewhere


@with_regions
async def test_a_topic_whose_own_policy_keeps_it_home_never_moves(regions: Regions) -> None:
    assert await regions.peers(OVERRIDDEN) == ()


@with_regions
async def test_a_failed_operation_on_a_healthy_cluster_moves_nothing(regions: Regions) -> None:
    assert not await regions.confirm_down(regions.home)
    assert regions.home.up


@with_regions
async def test_home_takes_traffic_back_after_being_healthy_long_enough(regions: Regions) -> None:
    await regions.peers(REPLICATED)
    home: Any = regions.home.admin
    moved = regions.home.moved()
    home.healthy = False
    await regions.confirm_down(regions.home)
    assert moved.is_set()
    home.healthy = True
    await asyncio.sleep(0.3)
    assert regions.home.up
    assert (await regions.serving(REPLICATED)).name == "east"


@with_regions
async def test_a_cluster_that_flaps_must_stay_healthy_longer_each_time(regions: Regions) -> None:
    home: Any = regions.home.admin
    first = regions.home.healthy_for_s
    for _ in range(2):
        home.healthy = False
        await regions.confirm_down(regions.home)
        home.healthy = True
        await regions.home.moved().wait()  # back up
    assert regions.home.healthy_for_s == first * 2  # the second fall came soon after


@with_regions
async def test_while_home_is_down_a_peer_policy_naming_both_allows_failover(
    regions: Regions,
) -> None:
    regions.home.admin.healthy = False  # type: ignore[attr-defined]
    await regions.confirm_down(regions.home)  # before any policy was known
    assert [r.name for r in await regions.peers(REPLICATED)] == ["west"]
    assert await regions.peers(RESIDENT) == ()  # west's word: not replicated there


@with_regions
async def test_readiness_asks_a_cluster_only_when_nothing_showed_it_answering(
    regions: Regions,
) -> None:
    east, west = regions.all["east"], regions.all["west"]
    admins: Any = {"east": east.admin, "west": west.admin}
    assert await regions.readiness() == {"east": None, "west": None}
    assert (admins["east"].checks, admins["west"].checks) == (1, 1)
    # A probe storm within the evidence window costs no call: the checks just answered.
    for _ in range(10):
        assert await regions.readiness() == {"east": None, "west": None}
    assert (admins["east"].checks, admins["west"].checks) == (1, 1)
    # Once the evidence is old, a failing cluster is asked, and named.
    admins["west"].healthy = False
    west.answered_at -= 60
    assert await regions.readiness() == {"east": None, "west": "cluster west is unreachable"}
    # A persisted publish is evidence as good as a check.
    east.answered_at -= 60
    east.answered()
    await regions.readiness()
    assert admins["east"].checks == 1
