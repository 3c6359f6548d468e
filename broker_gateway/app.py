"""create_app(settings): routes, error handlers, and a lifespan that owns Pulsar."""

import asyncio
import functools
import gc
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker_gateway import __version__, logs, tracing
from broker_gateway.api import health, manifests, publish, queue, read, stream
from broker_gateway.api.deps import Services
from broker_gateway.api.responses import ProblemJSON
from broker_gateway.auth import Authenticator, StreamTokens
from broker_gateway.draining import Draining
from broker_gateway.errors import (
    HTTP_STATUS_CODES,
    Forbidden,
    GatewayError,
    InvalidRequest,
    ProblemType,
    Unauthenticated,
    problem_body,
    problem_for,
)
from broker_gateway.limits import BodySizeLimit, InFlightLimit, StreamSlots, TenantLimits
from broker_gateway.metrics import Metrics
from broker_gateway.pulsar.service import PulsarService
from broker_gateway.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """\
An HTTP front door for Apache Pulsar: publish events, replay streams, follow them live and
run work queues, all over plain HTTP.

Topics are `{tenant}/{namespace}/{topic}` and always mean the persistent Pulsar topic.
Every error is `application/problem+json` with a stable `code` to switch on.

The platform team's manifests (tenants, namespaces, topics, schemas, subscriptions and
geo-replication, as YAML) are validated, planned, applied and exported under
`/v1/manifests`, against the clusters the gateway is configured with.

**Regions.** The first configured cluster serves every topic while it is up. A topic that
replicates to other configured clusters keeps working when it fails: publishes, reads,
streams and work queues move to a healthy peer and come back once the first is healthy
again. Each publish result's `cluster` (and the `Pulsar-Cluster` header) says where a message
was persisted; cursors and receipts name their cluster. A topic that does not replicate
never leaves its cluster: while that is down it answers 503 `broker_unavailable`.

**Browsers.** Pages on the origins in `GATEWAY_CORS_ORIGINS` may call the API (CORS; off
by default). An `EventSource` cannot send an Authorization header: it opens a stream with a
stream token (`POST .../stream-tokens`) as `?access_token=`, which that topic's stream alone
accepts. Every answer carries `X-Request-Id` (the client's, or a new one).

**Tracing.** A W3C `traceparent` / `tracestate` on a publish is stored in each message's
properties under those names, and comes back with read, pulled and streamed messages; with
OpenTelemetry configured (`OTEL_*`), the gateway's `send`, `receive` and `settle` spans join
the trace.

**Authentication.** Every `/v1` route needs `Authorization: Bearer <token>`: a JWT (HS256,
RS256 or ES256, with `exp`, `aud` and optional `nbf` checked) or an API key. The token
names a principal (`sub`), its `tenants` (`*` for all) and `scopes`: `publish` to publish,
`consume` to read, stream and use work queues, `admin` for manifests. Without a valid
token: 401 `unauthenticated`; outside its tenants or scopes: 403 `forbidden`. Cursors and
receipts only work on the topic (and subscription) they were made for.

**Limits.** Bodies over the size limit and publishes of too many messages are 413
`payload_too_large`; a tenant over its request or byte rate, or a principal over its
number of open streams, gets 429 `rate_limited` with `Retry-After`. A replica holding as
many requests as it may (`GATEWAY_MAX_IN_FLIGHT`) answers 503 `overloaded` with
`Retry-After` rather than queue without bound. `wait_ms` above the
maximum is lowered to it. `/livez`, `/readyz`, `/metrics` and the docs need no token.
"""


# What pages on an allowed origin may send, and read from answers (CORS).
CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "X-Request-Id",
    "traceparent",
    "tracestate",
]
CORS_EXPOSED_HEADERS = [
    "Retry-After",
    "Idempotent-Replayed",
    "Pulsar-Cluster",
    "X-Request-Id",
    "Location",
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if not logging.getLogger().handlers:  # a worker process: configured as `serve` is
        logs.configure(settings, quiet=False)
    if not tracing.recording():
        tracing.configure()
    metrics = Metrics()
    auth = Authenticator(settings)
    limits = TenantLimits(settings)
    streams = StreamSlots(settings.max_streams_per_principal, settings.broker_retry_after_s)
    secret = settings.receipt_secret
    stream_tokens = StreamTokens(
        None if secret is None else secret.get_secret_value().encode(),
        settings.stream_token_ttl_s,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pulsar = PulsarService(settings, metrics)
        for region in pulsar.regions.all.values():
            metrics.region_changed(region)
        draining = Draining()
        metrics.sample("streams", streams.open)
        app.state.services = Services(
            settings, pulsar, metrics, auth, limits, streams, draining, stream_tokens
        )
        refreshing = None
        try:
            await pulsar.open()
            refreshing = asyncio.create_task(metrics.refresh_forever(), name="metrics")
            _tune_runtime()
            with draining.on_signals(settings.shutdown_delay_s):
                yield
        finally:
            if refreshing is not None:
                refreshing.cancel()
            await pulsar.close()

    app = FastAPI(
        title="broker-gateway",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    for router in (
        health.router,
        publish.router,
        read.router,
        stream.router,
        queue.router,
        manifests.router,
    ):
        app.include_router(router)
    # Plain Starlette routes for the hottest paths, matched first; FastAPI's twins of
    # them stay for the OpenAPI document, which is made from FastAPI's routes alone.
    app.router.routes[0:0] = [*publish.fast_routes, *queue.fast_routes]
    respond = functools.partial(
        gateway_error_response, broker_retry_after_s=settings.broker_retry_after_s
    )
    _install_error_handlers(app, respond)
    _install_docs(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, respond=respond)
    app.add_middleware(InFlightLimit, limit=settings.max_in_flight, respond=respond)
    app.add_middleware(_Observed, metrics=metrics, respond=respond, access_log=settings.access_log)
    if settings.cors_origins:  # outermost: preflights and every answer, errors too
        app.add_middleware(
            _Cors,
            origins=settings.cors_origins,
            max_age_s=settings.cors_max_age_s,
            respond=respond,
        )
    return app


# Young objects a request makes (ASGI messages, dicts, coroutines) die young: collecting
# every 700 allocations cost ~9% of a single publish's CPU (py-spy); every 20,000, little.
_GC_THRESHOLDS = (20_000, 20, 20)
# pulsar-client's I/O thread takes the GIL for every send receipt and received message;
# while the event loop runs, it waits for the loop to yield it, by default after 5 ms
# (py-spy: a fifth of the I/O thread's samples waited there). At 0.5 ms a single publish
# cost 159 us of CPU instead of 194, and pulls of 100 ran twice as fast (bench, one run).
_GIL_SWITCH_INTERVAL_S = 0.0005


def _tune_runtime() -> None:
    """What startup made (modules, routes, clients) lives as long as the process: frozen,
    it is never scanned again; requests then collect less often. And the GIL changes
    hands sooner."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)
    sys.setswitchinterval(_GIL_SWITCH_INTERVAL_S)


def _problem(
    problem: ProblemType, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> ProblemJSON:
    return ProblemJSON(
        problem_body(problem, detail, **extra), status_code=problem.status, headers=headers
    )


def gateway_error_response(error: GatewayError, *, broker_retry_after_s: int) -> ProblemJSON:
    """The problem+json answer to a gateway error, with Retry-After and WWW-Authenticate
    where they belong: the one place they are added."""
    retry_after_s = error.retry_after_s
    if retry_after_s is None and error.retryable:
        retry_after_s = broker_retry_after_s
    headers = {} if retry_after_s is None else {"Retry-After": str(retry_after_s)}
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="broker-gateway"'
    return _problem(problem_for(error), error.detail, headers, **error.extra)


def _install_error_handlers(app: FastAPI, respond: Callable[[GatewayError], Response]) -> None:
    async def on_gateway_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return respond(exc)

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        # Where and what, never the offending input itself (it may be a secret or huge).
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return _problem(problem_for(InvalidRequest(detail)), detail, errors=errors)

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if isinstance(exc.__cause__, GatewayError):  # reading the body failed: over the limit
            return respond(exc.__cause__)
        if exc.status_code == 400:  # FastAPI could not parse the body: bad input, like any
            error = InvalidRequest(f"the body is not valid JSON: {exc.detail}")
            return _problem(problem_for(error), error.detail)
        code = HTTP_STATUS_CODES.get(exc.status_code, "http_error")
        problem = ProblemType(exc.status_code, code, code.replace("_", " ").capitalize())
        return _problem(problem, str(exc.detail), dict(exc.headers or {}))

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)


def _install_docs(app: FastAPI) -> None:
    """Swagger UI served from the installed package: /docs works with no internet."""
    assets = resources.files("fastapi_swagger") / "resources"
    app.mount("/docs/assets", StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="broker-gateway API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )


class _Cors(CORSMiddleware):
    """Starlette's CORS; a preflight it refuses (another origin, method or header) is a
    problem like any refusal: 403 `forbidden`."""

    def __init__(
        self,
        app: ASGIApp,
        origins: list[str],
        max_age_s: int,
        respond: Callable[[GatewayError], Response],
    ) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=max_age_s,
        )
        self.respond = respond

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        refused = bytes(response.body).decode(errors="replace")
        return self.respond(Forbidden(f"{refused} (GATEWAY_CORS_ORIGINS)"))


class _Observed:
    """Every request: its id (X-Request-Id, the client's or a new one, echoed), counted and
    timed by route template, an access line (never the query string: it may carry a stream
    token), and a crash turned into a 500 problem."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        respond: Callable[[GatewayError], Response],
        access_log: bool,
    ) -> None:
        self.app = ServerErrorMiddleware(app, handler=self._on_crash)
        self.metrics = metrics
        self.respond = respond
        self.access_log = access_log and logs.ACCESS.isEnabledFor(logging.INFO)

    async def _on_crash(self, _: Request, exc: Exception) -> Response:
        if isinstance(exc, GatewayError):  # raised outside a route (the server still logs it)
            return self.respond(exc)
        log.exception("unhandled error")
        problem = problem_for(GatewayError(""))
        return _problem(problem, "an unexpected error occurred; it has been logged")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = _request_id(scope["headers"])
        token = logs.request_id.set(rid)
        status = 500
        route = "unmatched"

        async def send_and_measure(message: Message) -> None:
            nonlocal status, route
            if message["type"] == "http.response.start":
                status = message["status"]
                route = getattr(scope.get("route"), "path", route)
                self.metrics.latency.labels(route, scope["method"]).observe(
                    time.perf_counter() - started
                )
                self.metrics.requests.labels(route, scope["method"], str(status)).inc()
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_and_measure)
        finally:
            if self.access_log:
                self._log(scope, route, status, time.perf_counter() - started)
            logs.request_id.reset(token)

    @staticmethod
    def _log(scope: Scope, route: str, status: int, duration_s: float) -> None:
        tenant = scope.get("path_params", {}).get("tenant")
        duration_ms = round(duration_s * 1000, 2)
        logs.ACCESS.info(
            "%s %s %d %.1f ms",
            scope["method"],
            route,
            status,
            duration_ms,
            extra={
                "method": scope["method"],
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
                "tenant": tenant,
            },
        )


# A client's X-Request-Id is kept when it is this plain; otherwise the gateway makes one.
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id" and _REQUEST_ID.match(value):
            return value.decode()
    return os.urandom(8).hex()
