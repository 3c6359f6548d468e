"""Liveness, readiness and metrics."""

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from broker_gateway.api.deps import App
from broker_gateway.api.responses import JSON, ProblemJSON, problems
from broker_gateway.errors import BrokerUnavailable, problem_body, problem_for

router = APIRouter(tags=["health"])


@router.get("/livez", summary="Liveness")
async def livez() -> JSON:
    """200 while the process runs."""
    return JSON({"status": "ok"})


@router.get("/readyz", summary="Readiness", responses=problems(503))
async def readyz(app: App) -> Response:
    """200 when every configured Pulsar cluster answers, else 503 naming the failing ones."""
    problems = await app.pulsar.check_clusters()
    failing = {name: detail for name, detail in problems.items() if detail is not None}
    if not failing:
        return JSON({"status": "ready", "clusters": {name: "ready" for name in problems}})
    error = BrokerUnavailable(
        "not ready: " + "; ".join(f"{n}: {d}" for n, d in failing.items()),
        retry_after_s=app.settings.broker_retry_after_s,
    )
    body = problem_body(problem_for(error), error.detail, clusters=failing)
    return ProblemJSON(
        body, status_code=503, headers={"Retry-After": str(app.settings.broker_retry_after_s)}
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(app: App) -> Response:
    """Prometheus text exposition format."""
    return Response(app.metrics.render(), media_type=app.metrics.content_type)
