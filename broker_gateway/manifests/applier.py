"""Carries out a plan's changes in order, retrying what is safe to retry."""

import logging
from collections.abc import Mapping
from typing import Any, Final

from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from broker_gateway.errors import (
    ApplyFailed,
    BrokerTimeout,
    BrokerUnavailable,
    GatewayError,
    NotFound,
)
from broker_gateway.manifests.admin import ManifestAdmin
from broker_gateway.manifests.planner import Change, Plan
from broker_gateway.manifests.render import describe

log = logging.getLogger(__name__)

# Every admin call here is idempotent (a create that finds the object is a success, a
# delete that misses it too), so a call whose answer was lost can be sent again.
_ATTEMPTS: Final = 4
# Retention goes before the backlog quota, which Pulsar checks against it.
_NAMESPACE_FIELDS: Final = (
    "replication",
    "retention",
    "message_ttl",
    "deduplication",
    "backlog_quota",
    "schema_compatibility",
    "schema_validation_enforced",
    "delayed_delivery",
)
_TOPIC_FIELDS: Final = ("replication", "retention", "message_ttl", "deduplication", "schema")


async def apply_plan(plan: Plan, admins: Mapping[str, ManifestAdmin]) -> list[dict[str, Any]]:
    """Run every pending change; a report per step.

    Raises: ApplyFailed at the first step that fails (with the steps so far).
    """
    steps: list[dict[str, Any]] = []
    for change in plan.pending:
        step = {"cluster": change.cluster, "action": change.action, "object": str(change.ref)}
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type((BrokerUnavailable, BrokerTimeout)),
                stop=stop_after_attempt(_ATTEMPTS),
                wait=wait_exponential(multiplier=0.25, max=4),
                before_sleep=before_sleep_log(log, logging.WARNING),
                reraise=True,
            ):
                with attempt:
                    await _execute(admins[change.cluster], change)
        except GatewayError as exc:
            steps.append({**step, "status": "failed", "detail": exc.detail})
            raise ApplyFailed(f"{describe(change)} failed: {exc.detail}", steps) from exc
        log.info("applied %s", describe(change))
        steps.append({**step, "status": "done"})
    return steps


async def _execute(admin: ManifestAdmin, change: Change) -> None:
    ref, fields = change.ref, change.desired
    create = change.action == "create"
    if change.action == "delete":
        await _delete(admin, change)
    elif ref.kind == "Cluster":
        await admin.put_peer(ref.name, fields, create=create)
    elif ref.kind == "Tenant":
        await admin.put_tenant(ref.name, fields, create=create)
    elif ref.kind == "Namespace":
        await _put_namespace(admin, change)
    elif ref.kind == "Topic":
        await _put_topic(admin, change)
    elif ref.kind == "Subscription":
        await admin.put_subscription(ref.name, fields)


async def _put_namespace(admin: ManifestAdmin, change: Change) -> None:
    name, fields = change.ref.name, change.desired
    create = change.action == "create"
    changed = {f.field for f in change.fields}
    if create:
        await admin.create_namespace(name)
    for field in _NAMESPACE_FIELDS:
        if field in changed or (create and field == "replication"):
            await admin.set_namespace_field(name, field, fields[field])


async def _put_topic(admin: ManifestAdmin, change: Change) -> None:
    name, fields = change.ref.name, change.desired
    changed = {f.field for f in change.fields}
    if change.action == "create":
        await admin.create_topic(name, fields["partitions"])
    elif "partitions" in changed:
        await admin.set_topic_field(name, "partitions", fields["partitions"])
    for field in _TOPIC_FIELDS:
        if field in changed:
            await admin.set_topic_field(name, field, fields[field])


async def _delete(admin: ManifestAdmin, change: Change) -> None:
    ref = change.ref
    try:
        if ref.kind == "Subscription":
            await admin.delete_subscription(ref.name)
        elif ref.kind == "Topic":
            await admin.delete_topic(ref.name, await admin.partitions(ref.name))
        elif ref.kind == "Namespace":
            await admin.delete_namespace(ref.name)
    except NotFound:
        pass  # gone already: what we wanted
