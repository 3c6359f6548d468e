"""Reads a cluster's live state in the planner's terms (see planner.State)."""

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

from broker_gateway.manifests.admin import Fields, ManifestAdmin
from broker_gateway.manifests.model import Manifests
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
    limit = asyncio.Semaphore(_CONCURRENCY)
    state: dict[Ref, Fields] = {}

    async def limited(call: Callable[[], Awaitable[T]]) -> T:
        async with limit:
            return await call()

    def wanted(kind: str, name: str) -> bool:
        if only is None:
            return True
        declared: dict[str, Any] = {  # type: ignore[assignment]
            "Namespace": only.namespaces,
            "Topic": only.topics,
            "Subscription": only.subscriptions,
        }[kind]
        return name in declared

    async def read_topic(name: str, partitions: int) -> None:
        with_schema = only is None or only.topics[name].spec.schema_ is not None
        state[Ref("Topic", name)] = await limited(
            lambda: admin.topic(name, partitions, with_schema=with_schema)
        )
        subscriptions = await limited(lambda: admin.subscriptions(name, partitions))
        for subscription, fields in subscriptions.items():
            key = f"{name}/{subscription}"
            if wanted("Subscription", key):
                state[Ref("Subscription", key)] = fields

    async def read_namespace(name: str) -> None:
        fields = await limited(lambda: admin.namespace(name))
        if fields is None:
            return
        state[Ref("Namespace", name)] = fields
        topics = await limited(lambda: admin.topics(name))
        await asyncio.gather(*(read_topic(t, p) for t, p in topics.items() if wanted("Topic", t)))

    for name, fields in (await admin.peers()).items():
        state[Ref("Cluster", name)] = fields
    for tenant in tenants:
        found = await admin.tenant(tenant)
        if found is None:
            continue
        state[Ref("Tenant", tenant)] = found
        namespaces = await admin.namespaces(tenant)
        await asyncio.gather(*(read_namespace(n) for n in namespaces if wanted("Namespace", n)))
    return state
