"""Reads a cluster's live state in the planner's terms (see planner.State)."""

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

from broker_gateway.manifests.admin import Fields, ManifestAdmin
from broker_gateway.manifests.model import RESERVED_NAMESPACE, Manifests
from broker_gateway.manifests.planner import Ref

T = TypeVar("T")

# Admin calls in flight per cluster while reading.
_CONCURRENCY: Final = 8


async def read_state(
    admin: ManifestAdmin, tenants: Iterable[str], *, only: Manifests | None = None
) -> dict[Ref, Fields]:
    """Peer clusters, and everything in the given tenants.

    With `only`, namespaces, topics and subscriptions no manifest in it declares are not
    read (a plan that does not prune has no use for them).
    """
    return await _StateReader(admin, only).read(tenants)


class _StateReader:
    """One read of one cluster, namespaces and topics concurrently."""

    def __init__(self, admin: ManifestAdmin, only: Manifests | None) -> None:
        self._admin = admin
        self._only = only
        self._limit = asyncio.Semaphore(_CONCURRENCY)
        self._state: dict[Ref, Fields] = {}

    async def read(self, tenants: Iterable[str]) -> dict[Ref, Fields]:
        for name, fields in (await self._admin.peers()).items():
            self._state[Ref("Cluster", name)] = fields
        for tenant in tenants:
            await self._read_tenant(tenant)
        return self._state

    async def _limited(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._limit:
            return await call()

    def _wanted(self, kind: str, name: str) -> bool:
        if self._only is None:
            return True
        declared: dict[str, Any] = {  # type: ignore[assignment]
            "Namespace": self._only.namespaces,
            "Topic": self._only.topics,
            "Subscription": self._only.subscriptions,
        }[kind]
        return name in declared

    async def _read_tenant(self, tenant: str) -> None:
        found = await self._admin.tenant(tenant)
        if found is None:
            return
        self._state[Ref("Tenant", tenant)] = found
        namespaces = [
            n
            for n in await self._admin.namespaces(tenant)
            if n.split("/")[1] != RESERVED_NAMESPACE and self._wanted("Namespace", n)
        ]
        await asyncio.gather(*(self._read_namespace(n) for n in namespaces))

    async def _read_namespace(self, name: str) -> None:
        admin = self._admin
        fields = await self._limited(lambda: admin.namespace(name))
        if fields is None:
            return
        self._state[Ref("Namespace", name)] = fields
        topics = await self._limited(lambda: admin.topics(name))
        await asyncio.gather(
            *(self._read_topic(t, p) for t, p in topics.items() if self._wanted("Topic", t))
        )

    async def _read_topic(self, name: str, partitions: int) -> None:
        admin = self._admin
        with_schema = self._only is None or self._only.topics[name].spec.schema_ is not None
        self._state[Ref("Topic", name)] = await self._limited(
            lambda: admin.topic(name, partitions, with_schema=with_schema)
        )
        subscriptions = await self._limited(lambda: admin.subscriptions(name, partitions))
        for subscription, fields in subscriptions.items():
            key = f"{name}/{subscription}"
            if self._wanted("Subscription", key):
                self._state[Ref("Subscription", key)] = fields
