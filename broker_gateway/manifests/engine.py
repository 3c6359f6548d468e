"""validate, plan, apply and export: the one engine behind the CLI and the HTTP routes."""

import asyncio
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker_gateway.errors import DestructiveChangeRefused, Forbidden, GatewayError, InvalidManifest
from broker_gateway.manifests.admin import Fields, ManifestAdmin
from broker_gateway.manifests.applier import apply_plan
from broker_gateway.manifests.audit import AuditLog, entry
from broker_gateway.manifests.export import documents_from_state
from broker_gateway.manifests.loader import Raw
from broker_gateway.manifests.model import Manifests, build
from broker_gateway.manifests.planner import Plan, Ref, State, desired_state, live_problems, plan
from broker_gateway.manifests.state import read_state
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.settings import Cluster

_SYSTEM_TENANTS = frozenset({"pulsar"})


@dataclass(frozen=True)
class Applied:
    plan: Plan
    steps: list[dict[str, Any]]


class ManifestEngine:
    """Works against the configured clusters only: manifests name clusters, never URLs."""

    def __init__(
        self,
        clusters: Sequence[Cluster],
        admins: Mapping[str, PulsarAdmin],
        audit: AuditLog | None = None,
    ) -> None:
        self._clusters = list(clusters)
        self._audit = audit
        tokens = {c.name: c.token for c in self._clusters if c.token is not None}
        self._admins = {name: ManifestAdmin(admin, tokens) for name, admin in admins.items()}

    def check(self, raw: Raw) -> Manifests:
        """Raises: InvalidManifest."""
        return build(raw, [c.name for c in self._clusters])

    async def validate(self, raw: Raw) -> Manifests:
        """Every check, including those against live state (partitions, schemas).

        Raises: InvalidManifest; BrokerUnavailable or BrokerTimeout.
        """
        manifests, _ = await self._prepare(raw, prune=False)
        return manifests

    async def plan(self, raw: Raw, *, prune: bool = False) -> Plan:
        """Raises: InvalidManifest; BrokerUnavailable or BrokerTimeout."""
        _, changes = await self._prepare(raw, prune=prune)
        return changes

    async def apply(
        self,
        raw: Raw,
        *,
        allow_destructive: bool = False,
        prune: bool = False,
        may_register_peers: bool = True,
        actor: str = "unknown",
    ) -> Applied:
        """Apply what plan shows, in dependency order, and record it, however it ends, in
        the audit trail of each tenant named (as `actor`).

        Raises: InvalidManifest, DestructiveChangeRefused or Forbidden (a peer cluster to
        register without `may_register_peers`): nothing changed then; ApplyFailed (the
        steps before the failing one took effect); BrokerUnavailable, BrokerTimeout.
        """
        options = {"allow_destructive": allow_destructive, "prune": prune}
        record = functools.partial(entry, raw, actor=actor, options=options)
        changes: Plan | None = None
        try:
            _, changes = await self._prepare(raw, prune=prune)
            peers = [c for c in changes.pending if c.ref.kind == "Cluster"]
            if peers and not may_register_peers:
                raise Forbidden(
                    "registering clusters with each other needs the platform-wide admin "
                    "scope (admin on tenant *): " + "; ".join(map(str, peers))
                )
            if changes.destructive and not allow_destructive:
                raise DestructiveChangeRefused(changes.destructive)
            applied = Applied(changes, await apply_plan(changes, self._admins))
        except GatewayError as exc:
            await self._write(record(plan=changes, steps=None, error=exc))
            raise
        await self._write(record(plan=changes, steps=applied.steps, error=None))
        return applied

    async def audit(self, tenant: str, limit: int) -> list[dict[str, Any]]:
        """The tenant's last `limit` apply records, oldest first.

        Raises: GatewayError.
        """
        return [] if self._audit is None else await self._audit.read(tenant, limit)

    async def _write(self, record: dict[str, Any]) -> None:
        if self._audit is not None:
            await self._audit.record(record)

    async def export(self, tenants: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The live state of these tenants (all but Pulsar's own when none) as manifests.

        Raises: BrokerUnavailable, BrokerTimeout.
        """
        if not tenants:
            listed = await asyncio.gather(*(a.tenants() for a in self._admins.values()))
            tenants = sorted({t for names in listed for t in names} - _SYSTEM_TENANTS)
        states = await self._read({name: list(tenants) for name in self._admins}, only=None)
        return documents_from_state(tenants, states, [c.name for c in self._clusters])

    async def _prepare(self, raw: Raw, *, prune: bool) -> tuple[Manifests, Plan]:
        manifests = self.check(raw)
        desired = desired_state(manifests, self._clusters)
        scope = {
            cluster: [t.name for t in manifests.tenants.values() if cluster in t.spec.clusters]
            for cluster in desired
        }
        actual = await self._read(scope, only=None if prune else manifests)
        problems = live_problems(desired, actual) + await self._schema_problems(desired, actual)
        if problems:
            raise InvalidManifest(problems)
        return manifests, plan(desired, actual, prune_tenants=manifests.tenants if prune else ())

    async def _read(
        self, scope: Mapping[str, list[str]], *, only: Manifests | None
    ) -> dict[str, dict[Ref, Fields]]:
        names = list(scope)
        states = await asyncio.gather(
            *(read_state(self._admins[n], scope[n], only=only) for n in names)
        )
        return dict(zip(names, states, strict=True))

    async def _schema_problems(
        self, desired: Mapping[str, State], actual: Mapping[str, State]
    ) -> list[str]:
        """A changed schema must pass the namespace's compatibility rule on every cluster."""
        problems = []
        for cluster, wanted in sorted(desired.items()):
            for ref, fields in sorted(wanted.items()):
                live = actual[cluster].get(ref, {})
                new, old = fields.get("schema"), live.get("schema")
                if new is None or old is None or new == old:
                    continue
                refusal = await self._admins[cluster].schema_refusal(ref.name, new)
                if refusal:
                    problems.append(f"{ref} on {cluster}: schema change refused: {refusal}")
        return problems
