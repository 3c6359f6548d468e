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
    """200 when every configured Pulsar cluster answers, else 503 naming the failing ones;
    503 `shutting_down` from the moment the replica is told to stop."""
    if services.draining.is_set():
        raise ShuttingDown("this replica is shutting down")
    problems = await services.pulsar.check_clusters()
    failing = {name: detail for name, detail in problems.items() if detail is not None}
    if not failing:
        return JSON({"status": "ready", "clusters": {name: "ready" for name in problems}})
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
