"""Manifests over HTTP: validate, plan, apply and export, with the CLI's engine."""

from typing import Annotated, Any, Final

import orjson
import yaml
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from broker_gateway.api.bodies import media_type, validated
from broker_gateway.api.deps import AppServices, CurrentPrincipal, Engine
from broker_gateway.api.responses import JSON, V1_PROBLEMS, inline_schema, problems
from broker_gateway.auth import Principal
from broker_gateway.errors import InvalidManifest
from broker_gateway.manifests.audit import tenants_named
from broker_gateway.manifests.loader import Raw, parse_text
from broker_gateway.manifests.model import ManifestProblem, Name
from broker_gateway.manifests.render import plan_json, plan_text

router = APIRouter(
    prefix="/v1/manifests", tags=["manifests"], responses={**V1_PROBLEMS, **problems(409)}
)


class ManifestRequest(BaseModel):
    documents: list[dict[str, Any]] = Field(description="Manifest documents.")
    allow_destructive: bool = False
    prune: bool = False


_MANIFESTS: Final = {
    "required": True,
    "description": "Manifest documents: a YAML stream (`application/yaml`), or JSON: one "
    'document, a list of them, or `{"documents": [...], "allow_destructive": false, '
    '"prune": false}`.',
    "content": {
        "application/yaml": {"schema": {"type": "string"}},
        "application/json": {"schema": inline_schema(ManifestRequest)},
    },
}
AllowDestructive = Annotated[
    bool,
    Query(
        description="Also run changes that lose data (deletions, clusters dropped from "
        "replication, partition changes). Same as `allow_destructive` in a JSON body."
    ),
]
Prune = Annotated[
    bool,
    Query(
        description="Delete namespaces, topics and subscriptions of the manifests' tenants "
        "that no manifest declares (destructive). Same as `prune` in a JSON body."
    ),
]


class _Options:
    def __init__(self, raw: Raw, allow_destructive: bool, prune: bool) -> None:
        self.raw, self.allow_destructive, self.prune = raw, allow_destructive, prune


async def _read(
    request: Request, principal: Principal, allow_destructive: bool, prune: bool
) -> _Options:
    """The manifests of the body, once the caller is admin of every tenant they name."""
    principal.require_scope("admin")
    options = await _parse(request, allow_destructive, prune)
    principal.require("admin", tenants_named(options.raw))
    return options


async def _parse(request: Request, allow_destructive: bool, prune: bool) -> _Options:
    body = await request.body()
    if media_type(request.headers) == "application/json":
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidManifest([ManifestProblem("body", f"not valid JSON: {exc}")]) from exc
        if isinstance(parsed, dict) and "documents" in parsed:
            options = validated(ManifestRequest, parsed)
            return _Options(
                [(f"body#{i}", d) for i, d in enumerate(options.documents, start=1)],
                allow_destructive or options.allow_destructive,
                prune or options.prune,
            )
        items = parsed if isinstance(parsed, list) else [parsed]
        return _Options(
            [(f"body#{i}", d) for i, d in enumerate(items, start=1)], allow_destructive, prune
        )
    return _Options(parse_text(body, "body"), allow_destructive, prune)


@router.post("/validate", summary="Validate manifests", openapi_extra={"requestBody": _MANIFESTS})
async def validate(request: Request, engine: Engine, principal: CurrentPrincipal) -> JSON:
    """Check manifests, against live state too (partition counts, schema compatibility).

    422 `invalid_manifest` lists every problem; nothing is ever changed.
    """
    options = await _read(request, principal, False, False)
    manifests = await engine.validate(options.raw)
    return JSON(
        {
            "valid": True,
            "objects": {
                "tenants": len(manifests.tenants),
                "namespaces": len(manifests.namespaces),
                "topics": len(manifests.topics),
                "subscriptions": len(manifests.subscriptions),
            },
        }
    )


@router.post("/plan", summary="Plan manifests", openapi_extra={"requestBody": _MANIFESTS})
async def plan(
    request: Request, engine: Engine, principal: CurrentPrincipal, prune: Prune = False
) -> JSON:
    """The changes per cluster (create / update / delete / no-op, with old and new values).

    Destructive changes are flagged with the reason. `text` is the same plan as the CLI
    prints it. An invalid manifest is 422 `invalid_manifest`.
    """
    options = await _read(request, principal, False, prune)
    changes = await engine.plan(options.raw, prune=options.prune)
    return JSON({**plan_json(changes), "text": plan_text(changes)})


@router.post("/apply", summary="Apply manifests", openapi_extra={"requestBody": _MANIFESTS})
async def apply(
    request: Request,
    engine: Engine,
    principal: CurrentPrincipal,
    services: AppServices,
    allow_destructive: AllowDestructive = False,
    prune: Prune = False,
) -> JSON:
    """Apply exactly what plan shows, parents first, and report each step.

    Like every manifest route, needs `admin` on each tenant the manifests name; registering
    clusters with each other needs the platform-wide admin (`admin` on tenant `*`).

    Destructive changes need `allow_destructive`, else 409 `destructive_change_refused`
    and nothing changes. Applying the same manifests again is a no-op. A step that fails
    after retries ends the apply: 502 `apply_failed` lists the steps that ran.

    Every apply, however it ends, is recorded in the audit trail of each tenant it names
    (see `GET /v1/manifests/audit`).
    """
    options = await _read(request, principal, allow_destructive, prune)
    applied = await engine.apply(
        options.raw,
        allow_destructive=options.allow_destructive,
        prune=options.prune,
        may_register_peers=principal.platform_admin,
        actor=principal.name,
    )
    # This replica checks publishes against the new schemas at once; others within
    # GATEWAY_SCHEMA_REFRESH_S.
    services.pulsar.schemas.forget(
        c.ref.name for c in applied.plan.pending if c.ref.kind == "Topic"
    )
    return JSON(
        {
            **plan_json(applied.plan),
            "text": plan_text(applied.plan),
            "steps": applied.steps,
        }
    )


@router.get(
    "/export",
    summary="Export live state as manifests",
    responses={200: {"content": {"application/yaml": {}, "application/json": {}}}},
)
async def export(
    engine: Engine,
    principal: CurrentPrincipal,
    tenant: Annotated[
        list[Name] | None,
        Query(description="Tenants to export (repeatable); default every tenant but `pulsar`."),
    ] = None,
    format: Annotated[str, Query(pattern="^(json|yaml)$")] = "json",
) -> Response:
    """The tenants' live state as manifests, defaults left out: applying it is a no-op.

    JSON is `{"documents": [...]}`; `format=yaml` gives a YAML stream for `topics/`.
    """
    principal.require_scope("admin")
    if tenant:
        principal.require("admin", tenant)
    elif not principal.platform_admin:
        tenant = sorted(principal.tenants)  # the caller's own tenants, not everybody's
    documents = await engine.export(tenant or [])
    if format == "yaml":
        text = yaml.safe_dump_all(documents, sort_keys=False, allow_unicode=True)
        return Response(text, media_type="application/yaml")
    return JSON({"documents": documents})


@router.get("/audit", summary="The audit trail of applies")
async def audit(
    engine: Engine,
    principal: CurrentPrincipal,
    tenant: Annotated[Name, Query(description="The tenant whose trail to show")],
    limit: Annotated[int, Query(ge=1, le=10_000, description="The last this many")] = 100,
) -> JSON:
    """Every apply that named the tenant, oldest first, from the CLI or over HTTP: `time`,
    `actor` (the principal, or `cli:{user}`), the manifests' `digest` (SHA-256), its
    `options`, the `plan` it ran (pending changes), the `outcome` (`applied`, `refused`,
    `invalid`, `failed`), the `steps` that ran and any `error`. No manifest content and no
    secret is recorded.

    The trail is the Pulsar topic `{tenant}/broker-gateway/manifest-audit` on the data
    cluster: it can be read and followed with the Read API too. Needs `admin` on the tenant.
    """
    principal.require("admin", [tenant])
    return JSON({"records": await engine.audit(tenant, limit)})
