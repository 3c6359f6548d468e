"""Liveness, readiness and metrics."""

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from broker_gateway.api.deps import AppServices
from broker_gateway.api.responses import JSON, problems
from broker_gateway.errors import BrokerUnavailable, ShuttingDown

router = APIRouter(tags=["health"])


@router.get("/livez", summary="Liveness")
async def livez() -> JSON:
    """200 while the process runs."""
    return JSON({"status": "ok"})


@router.get("/readyz", summary="Readiness", responses=problems(503))
async def readyz(services: AppServices) -> Response:
    """200 while at least one configured Pulsar cluster answers: `status` is `ready` when
    all do, else `degraded`, naming each failing cluster's problem (replicated topics fail
    over to a peer; the others wait for their home cluster). 503 when none answers, and
    503 `shutting_down` from the moment the replica is told to stop. A cluster that
    persisted a publish or passed a check within the last 2 s is not asked again, so a
    busy replica stays ready and probes add no load on Pulsar."""
    if services.draining.is_set():
        raise ShuttingDown("this replica is shutting down")
    problems = await services.pulsar.regions.readiness()
    failing = {name: detail for name, detail in problems.items() if detail is not None}
    if len(failing) < len(problems):
        return JSON(
            {
                "status": "degraded" if failing else "ready",
                "clusters": {name: detail or "ready" for name, detail in problems.items()},
            }
        )
    error = BrokerUnavailable("not ready: " + "; ".join(f"{n}: {d}" for n, d in failing.items()))
    error.extra = {"clusters": failing}
    raise error


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(services: AppServices) -> Response:
    """Prometheus text exposition format."""
    return Response(services.metrics.render(), media_type=services.metrics.content_type)
