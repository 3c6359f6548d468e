"""The audit trail: every apply, from the CLI or over HTTP, as a message on a Pulsar topic.

Each tenant an apply names gets the record on its own topic, `{tenant}/broker-gateway/
manifest-audit` on the data cluster (the namespace is reserved: manifests cannot declare
it, export and prune leave it alone). The trail is a stream like any other: readable
with the Read API by whoever may consume the tenant, and through `GET
/v1/manifests/audit` and `broker-gateway audit` by its admins.

A record says who applied (the principal, or the CLI's user), when, the digest of the
manifests, the options, the plan's pending changes, and the outcome: `applied`,
`refused` (destructive, or not allowed), `invalid`, or `failed` (with the steps that
ran). Manifests are not recorded, only their digest, and plans carry no secrets (peer
clusters' tokens never enter a plan), so no secret enters the trail.
"""

import asyncio
import getpass
import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import orjson
import pulsar.asyncio

from broker_gateway.errors import (
    Conflict,
    DestructiveChangeRefused,
    Forbidden,
    GatewayError,
    InvalidManifest,
    TopicNotFound,
    problem_for,
)
from broker_gateway.manifests.loader import Raw
from broker_gateway.manifests.model import RESERVED_NAMESPACE
from broker_gateway.manifests.planner import Plan
from broker_gateway.manifests.render import plan_json
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.pulsar.codecs import Start, TopicName
from broker_gateway.pulsar.reading import TopicReader

log = logging.getLogger(__name__)

AUDIT_NAMESPACE: Final = RESERVED_NAMESPACE
AUDIT_TOPIC: Final = "manifest-audit"


def audit_topic(tenant: str) -> TopicName:
    """Raises: InvalidRequest for a name no tenant can have."""
    return TopicName.parse(tenant, AUDIT_NAMESPACE, AUDIT_TOPIC)


def tenants_named(raw: Raw) -> set[str]:
    """The tenants documents name, read before any validation (a subscription's, through
    its topic)."""
    tenants = set()
    for _, document in raw:
        metadata = document.get("metadata") if isinstance(document, dict) else None
        if not isinstance(metadata, dict):
            continue
        name = metadata.get("topic") if document.get("kind") == "Subscription" else None
        name = name or metadata.get("name")
        if isinstance(name, str):
            tenants.add(name.split("/")[0])
    return tenants


def digest(raw: Raw) -> str:
    """What was applied, as one value: the SHA-256 of the documents as canonical JSON
    (keys sorted, no spaces, UTF-8)."""
    documents = [document for _, document in raw]
    try:
        canonical = json.dumps(
            documents, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        )
    except (TypeError, ValueError):  # keys JSON cannot sort (only in documents not valid)
        canonical = repr(documents)
    return "sha256:" + hashlib.sha256(canonical.encode(errors="surrogatepass")).hexdigest()


def cli_actor() -> str:
    """Who runs the CLI: the operating system's user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (some containers)
        return "cli:unknown"


def entry(
    raw: Raw,
    *,
    actor: str,
    options: dict[str, bool],
    plan: Plan | None,
    steps: list[dict[str, Any]] | None,
    error: GatewayError | None,
) -> dict[str, Any]:
    """One record of an apply and how it ended."""
    record: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "actor": actor,
        "digest": digest(raw),
        "tenants": sorted(tenants_named(raw)),
        "options": options,
        "outcome": _outcome(error),
        "plan": None if plan is None else _pending(plan),
        "steps": steps if error is None else error.extra.get("steps", []),
    }
    if error is not None:
        record["error"] = {"code": problem_for(error).code, "detail": error.detail}
    return record


def _outcome(error: GatewayError | None) -> str:
    match error:
        case None:
            return "applied"
        case DestructiveChangeRefused() | Forbidden():
            return "refused"
        case InvalidManifest():
            return "invalid"
        case _:  # a step failed (ApplyFailed), or a cluster did not answer
            return "failed"


def _pending(plan: Plan) -> dict[str, Any]:
    planned = plan_json(plan)
    return {
        "summary": planned["summary"],
        "destructive": planned["destructive"],
        "clusters": {
            cluster: [c for c in changes if c["action"] != "no-op"]
            for cluster, changes in planned["clusters"].items()
        },
    }


class AuditLog:
    """Writes and reads the trail on the data cluster."""

    def __init__(self, admin: PulsarAdmin, client: Callable[[], pulsar.asyncio.Client]) -> None:
        """`client()` gives the data cluster's client, asked for only when a record is
        written or read (the CLI makes one then)."""
        self._client = client
        self._admin = admin
        self._ready: set[str] = set()  # tenants whose audit namespace exists

    async def record(self, record: dict[str, Any]) -> None:
        """Append the record to each of its tenants' trails; a tenant that does not exist
        on the data cluster (an apply refused before creating it) has none, and the record
        goes to the log there."""
        payload = orjson.dumps(record)
        for tenant in record["tenants"]:
            try:
                await self._append(audit_topic(tenant), payload)
            except (GatewayError, pulsar.asyncio.PulsarException, httpx.HTTPError) as exc:
                detail = exc.detail if isinstance(exc, GatewayError) else str(exc)
                log.warning(
                    "audit record for tenant %s not written (%s): %s",
                    tenant,
                    detail,
                    payload.decode(),
                )

    async def read(self, tenant: str, limit: int) -> list[dict[str, Any]]:
        """The tenant's last `limit` records, oldest first."""
        topic = audit_topic(tenant)
        try:
            await self._admin.last_position(topic, -1)
        except TopicNotFound:
            return []
        reader = await TopicReader.open(
            self._client(), self._admin, topic, Start("earliest"), queue_size=1000
        )
        records: list[dict[str, Any]] = []
        try:
            while batch := await reader.read(1000, 0):
                records.extend(orjson.loads(d.message.data()) for d in batch)
                del records[:-limit]
        finally:
            await reader.close()
        return records

    async def _append(self, topic: TopicName, payload: bytes) -> None:
        tenant = topic.tenant
        if tenant not in self._ready:
            await self._ensure_namespace(tenant)
            self._ready.add(tenant)
        producer = await self._client().create_producer(topic.persistent)
        try:
            await producer.send(payload)
        finally:
            await asyncio.shield(producer.close())

    async def _ensure_namespace(self, tenant: str) -> None:
        """Raises: NotFound when the tenant does not exist; GatewayError."""
        namespace = f"/admin/v2/namespaces/{tenant}/{AUDIT_NAMESPACE}"
        try:
            await self._admin.request("PUT", namespace)
        except Conflict:
            pass
        # The trail stays where it was written: on the data cluster only, kept forever.
        cluster = self._admin.cluster.name
        await self._admin.request("POST", f"{namespace}/replication", json=[cluster])
        await self._admin.request(
            "POST",
            f"{namespace}/retention",
            json={"retentionTimeInMinutes": -1, "retentionSizeInMB": -1},
        )
