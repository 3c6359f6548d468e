"""Plans for people (text, as the CLI prints it) and for programs (JSON)."""

from typing import Any, Final

from pydantic import BaseModel

from broker_gateway.manifests.model import Schema
from broker_gateway.manifests.planner import Change, Plan
from broker_gateway.manifests.units import format_duration

_SIGNS: Final = {"create": "+", "update": "~", "delete": "-", "no-op": " "}


def describe(change: Change) -> str:
    return f"{change.action} {change.ref} on {change.cluster}"


def value_json(field: str, value: Any) -> Any:
    """A field value as JSON, in the units manifests use."""
    if value is None:
        return None
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, tuple):
        return list(value)
    if field == "message_ttl":
        return format_duration(value)
    return value


def show(field: str, value: Any) -> str:
    """A field value in one short line."""
    if value is None:
        return "(inherited)" if field != "schema" else "(none)"
    if isinstance(value, Schema):
        text = value.data()
        return f"{value.type} {text[:60]}{'…' if len(text) > 60 else ''}".strip()
    shown = value_json(field, value)
    if isinstance(shown, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in shown.items()) + "}"
    if isinstance(shown, list):
        return "[" + ", ".join(str(v) for v in shown) + "]"
    if isinstance(shown, bool):
        return str(shown).lower()
    return str(shown)


def plan_json(plan: Plan) -> dict[str, Any]:
    """`{"summary": ..., "destructive": n, "clusters": {name: [change, ...]}}`."""
    clusters: dict[str, list[dict[str, Any]]] = {}
    for change in plan.changes:
        clusters.setdefault(change.cluster, []).append(
            {
                "action": change.action,
                "kind": change.ref.kind,
                "name": change.ref.name,
                "changes": [
                    {
                        "field": f.field,
                        "old": value_json(f.field, f.old),
                        "new": value_json(f.field, f.new),
                    }
                    for f in change.fields
                ],
                "destructive": change.destructive is not None,
                "reason": change.destructive,
            }
        )
    return {
        "summary": plan.summary(),
        "destructive": len(plan.destructive),
        "clusters": dict(sorted(clusters.items())),
    }


def plan_text(plan: Plan, *, verbose: bool = False) -> str:
    """A readable per-cluster diff; no-ops are counted, and listed only when verbose."""
    counts = plan.summary()
    lines = [
        f"Plan: {counts['create']} to create, {counts['update']} to update, "
        f"{counts['delete']} to delete, {counts['no-op']} unchanged."
    ]
    if plan.destructive:
        lines.append(
            f"{len(plan.destructive)} destructive change(s): apply refuses them "
            "without allow_destructive."
        )
    by_cluster: dict[str, list[Change]] = {}
    for change in plan.changes:
        by_cluster.setdefault(change.cluster, []).append(change)
    for cluster, changes in sorted(by_cluster.items()):
        shown = [c for c in changes if verbose or c.action != "no-op"]
        if not shown:
            continue
        lines += ["", f"cluster {cluster}:"]
        for change in shown:
            lines.append(f"  {_SIGNS[change.action]} {change.action} {change.ref}")
            for f in change.fields:
                if change.action == "create":
                    lines.append(f"      {f.field}: {show(f.field, f.new)}")
                else:
                    lines.append(
                        f"      {f.field}: {show(f.field, f.old)} → {show(f.field, f.new)}"
                    )
            if change.destructive:
                lines.append(f"      ! destructive: {change.destructive}")
    if not plan.pending:
        lines += ["", "No changes: the clusters match the manifests."]
    return "\n".join(lines) + "\n"
