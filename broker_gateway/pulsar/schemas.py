"""Each topic's contract (its registered schema), cached so that a publish never waits on
the admin API: fetched once per topic and refresh interval, and once per version.

A manifest apply through this replica forgets what it changed at once; other replicas,
and changes made elsewhere (the CLI, Pulsar's own admin), are seen within `refresh_s`.
If a refresh fails, the contract already known is kept until one succeeds.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import _pulsar
import pulsar.schema

from broker_gateway.errors import GatewayError, NotFound, SchemaVersionUnknown
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.contracts import Contract

log = logging.getLogger(__name__)


class Schemas:
    def __init__(self, admin_of: Callable[[TopicName], PulsarAdmin], *, refresh_s: float) -> None:
        """`admin_of(topic)`: the admin API of the cluster serving the topic now."""
        self._admin_of = admin_of
        self._refresh_s = refresh_s
        # topic path -> (its latest contract or None, fetched at)
        self._current: dict[str, tuple[Contract | None, float]] = {}
        self._versions: dict[tuple[str, int], Contract] = {}
        self._fetching: dict[str, asyncio.Task[Contract | None]] = {}

    async def current(self, topic: TopicName) -> Contract | None:
        """The topic's latest contract; None when it has no schema.

        Raises: GatewayError when it was never fetched and cannot be now.
        """
        known = self._current.get(topic.path)
        if known is not None and time.monotonic() - known[1] < self._refresh_s:
            return known[0]
        task = self._fetching.get(topic.path)
        if task is None:
            task = asyncio.create_task(self._fetch(topic))
            self._fetching[topic.path] = task
            task.add_done_callback(lambda _: self._fetching.pop(topic.path, None))
        try:
            return await asyncio.shield(task)
        except GatewayError as exc:
            if known is None:
                raise
            log.warning("refreshing the schema of %s failed, kept: %s", topic, exc.detail)
            return known[0]

    async def version(self, topic: TopicName, version: int) -> Contract:
        """One version of the topic's contract.

        Raises: SchemaVersionUnknown; GatewayError.
        """
        cached = self._versions.get((topic.path, version))
        if cached is not None:
            return cached
        current = await self.current(topic)
        if current is not None and current.version == version:
            return current
        try:
            body = await self._admin_of(topic).request(
                "GET", f"/admin/v2/schemas/{topic.path}/schema/{version}"
            )
        except NotFound:
            body = None
        if not body or body.get("type") is None:
            raise SchemaVersionUnknown(f"topic {topic} has no schema version {version}")
        return self._keep(topic, _contract(version, body))

    async def by_version(self, topic: TopicName, versions: Iterable[int]) -> dict[int, Contract]:
        """The contracts of the versions given that the topic has (others are left out).

        Raises: GatewayError.
        """
        found: dict[int, Contract] = {}
        for version in set(versions):
            if version < 0:
                continue
            try:
                found[version] = await self.version(topic, version)
            except SchemaVersionUnknown:
                pass
        return found

    def forget(self, topics: Iterable[str]) -> None:
        """These topics' schemas may have changed (a manifest apply here)."""
        for path in topics:
            self._current.pop(path, None)

    async def _fetch(self, topic: TopicName) -> Contract | None:
        try:
            body = await self._admin_of(topic).request(
                "GET", f"/admin/v2/schemas/{topic.path}/schema"
            )
        except NotFound:
            body = None
        contract = None
        if body and body.get("type") is not None:
            contract = self._keep(topic, _contract(int(body["version"]), body))
            if not contract.enforced:
                contract = None
        self._current[topic.path] = (contract, time.monotonic())
        return contract

    def _keep(self, topic: TopicName, contract: Contract) -> Contract:
        self._versions[(topic.path, contract.version)] = contract
        return contract


def _contract(version: int, body: dict[str, Any]) -> Contract:
    return Contract.of(version, str(body["type"]), str(body.get("data") or ""))


class ContractSchema(pulsar.schema.Schema):  # type: ignore[misc]
    """A producer's schema that is exactly the topic's registered one, so Pulsar finds it
    among the topic's versions (it never registers one) and stamps each message with that
    version. Payloads are encoded by the Contract before they get here."""

    def __init__(self, contract: Contract) -> None:
        self._schema_info = _pulsar.SchemaInfo(
            getattr(_pulsar.SchemaType, contract.type), "", contract.definition
        )

    def encode(self, obj: bytes) -> bytes:
        return obj

    def decode(self, data: bytes) -> bytes:
        return data

    @staticmethod
    def possible(contract: Contract) -> bool:
        """Whether pulsar-client can present this type (it has no BOOLEAN, for one)."""
        return hasattr(_pulsar.SchemaType, contract.type)
