"""What routes are handed: settings, the Pulsar service, validated names, the caller.

Every dependency is `async def`, though none awaits: FastAPI runs a plain `def` dependency
in its thread pool, a round trip through another thread on every request.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from broker_gateway.auth import Authenticator, Principal, Scope
from broker_gateway.limits import StreamSlots, TenantLimits
from broker_gateway.manifests.engine import ManifestEngine
from broker_gateway.metrics import Metrics
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.service import PulsarService
from broker_gateway.settings import Settings


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _pulsar(request: Request) -> PulsarService:
    service: PulsarService = request.app.state.pulsar
    return service


async def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def _limits(request: Request) -> TenantLimits:
    limits: TenantLimits = request.app.state.limits
    return limits


async def _streams(request: Request) -> StreamSlots:
    streams: StreamSlots = request.app.state.streams
    return streams


# Declares the scheme in the OpenAPI document (and /docs' Authorize button); the header
# itself is checked by the app's Authenticator.
_bearer = HTTPBearer(
    auto_error=False,
    description="A JWT (or API key) naming the principal, its tenants and scopes.",
)


async def _principal(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    authenticator: Authenticator = request.app.state.auth
    return authenticator.authenticate(request.headers.get("authorization"))


async def _engine(request: Request) -> ManifestEngine:
    return ManifestEngine(request.app.state.settings.clusters, request.app.state.pulsar.admins)


async def _topic(
    tenant: Annotated[str, Path(description="Tenant name")],
    namespace: Annotated[str, Path(description="Namespace name")],
    topic: Annotated[str, Path(description="Topic name (persistent)")],
) -> TopicName:
    return TopicName.parse(tenant, namespace, topic)


def _authorized(scope: Scope) -> Callable[..., Awaitable[TopicName]]:
    """The topic of the path, once the caller may use `scope` on its tenant (and the
    tenant is within its request rate)."""

    async def authorized(
        principal: Annotated[Principal, Depends(_principal)],
        topic: Annotated[TopicName, Depends(_topic)],
        limits: Annotated[TenantLimits, Depends(_limits)],
    ) -> TopicName:
        principal.require(scope, [topic.tenant])
        limits.request(topic.tenant)
        return topic

    return authorized


AppSettings = Annotated[Settings, Depends(_settings)]
Pulsar = Annotated[PulsarService, Depends(_pulsar)]
AppMetrics = Annotated[Metrics, Depends(_metrics)]
CurrentPrincipal = Annotated[Principal, Depends(_principal)]
Limits = Annotated[TenantLimits, Depends(_limits)]
Streams = Annotated[StreamSlots, Depends(_streams)]
# Every topic route takes one of these: the caller is authenticated and authorized first.
PublishTopic = Annotated[TopicName, Depends(_authorized("publish"))]
ConsumeTopic = Annotated[TopicName, Depends(_authorized("consume"))]
Engine = Annotated[ManifestEngine, Depends(_engine)]
