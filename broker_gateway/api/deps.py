"""What routes are handed: the app's services, an authorized topic, the caller.

Every dependency is `async def`, though none awaits: FastAPI runs a plain `def` dependency
in its thread pool, a round trip through another thread on every request.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from broker_gateway.auth import Authenticator, Principal, Scope, StreamTokens
from broker_gateway.draining import Draining
from broker_gateway.limits import StreamSlots, TenantLimits
from broker_gateway.manifests.audit import AuditLog
from broker_gateway.manifests.engine import ManifestEngine
from broker_gateway.metrics import Metrics
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.service import PulsarService
from broker_gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class Services:
    """What routes work with, handed over as one dependency: FastAPI's cost is per
    dependency, on every request."""

    settings: Settings
    pulsar: PulsarService
    metrics: Metrics
    auth: Authenticator
    limits: TenantLimits
    streams: StreamSlots
    draining: Draining
    stream_tokens: StreamTokens


async def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


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
    services: Services = request.app.state.services
    return services.auth.authenticate(request.headers.get("authorization"))


async def _engine(request: Request) -> ManifestEngine:
    services: Services = request.app.state.services
    pulsar = services.pulsar
    audit = AuditLog(pulsar.admin, lambda: pulsar.client)
    return ManifestEngine(services.settings.clusters, pulsar.admins, audit)


# A topic route's path parameters.
TenantName = Annotated[str, Path(description="Tenant name")]
NamespaceName = Annotated[str, Path(description="Namespace name")]
TopicPart = Annotated[str, Path(description="Topic name (persistent)")]


def _authorized(scope: Scope) -> Callable[..., Awaitable[TopicName]]:
    """The topic of the path, once the caller may use `scope` on its tenant (and the
    tenant is within its request rate).

    One dependency doing it all, in this order: 401, then 422 for a bad name, 403, 429.
    """

    async def authorized(
        request: Request,
        tenant: TenantName,
        namespace: NamespaceName,
        topic: TopicPart,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> TopicName:
        return authorize(request.app.state.services, request, scope, tenant, namespace, topic)

    return authorized


def authorize(
    services: Services, request: Request, scope: Scope, tenant: str, namespace: str, topic: str
) -> TopicName:
    """The topic, once the caller may use `scope` on its tenant: 401, then 422 for a bad
    name, 403, 429 (the tenant's request rate)."""
    principal = services.auth.authenticate(request.headers.get("authorization"))
    name = TopicName.parse(tenant, namespace, topic)
    principal.require(scope, [name.tenant])
    services.limits.request(name.tenant)
    return name


async def _stream_caller(
    request: Request,
    tenant: TenantName,
    namespace: NamespaceName,
    topic: TopicPart,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    access_token: Annotated[
        str | None,
        Query(
            description="A stream token (POST .../stream-tokens), for clients that cannot "
            "send an Authorization header, such as a browser's EventSource. Only this route "
            "accepts it; the Authorization header wins when both are sent."
        ),
    ] = None,
) -> tuple[TopicName, Principal]:
    """The topic of a live stream and who follows it: by its Authorization header like any
    route, or by a stream token made for this topic."""
    services: Services = request.app.state.services
    if access_token is None or "authorization" in request.headers or not services.auth.enabled:
        name = authorize(services, request, "consume", tenant, namespace, topic)
        return name, services.auth.authenticate(request.headers.get("authorization"))
    name = TopicName.parse(tenant, namespace, topic)
    principal = services.stream_tokens.verify(access_token, name.path)
    services.limits.request(name.tenant)
    return name, principal


AppServices = Annotated[Services, Depends(_services)]
CurrentPrincipal = Annotated[Principal, Depends(_principal)]
# Every topic route takes one of these: the caller is authenticated and authorized first.
PublishTopic = Annotated[TopicName, Depends(_authorized("publish"))]
ConsumeTopic = Annotated[TopicName, Depends(_authorized("consume"))]
# The live stream's: a consume topic, also by stream token.
StreamCaller = Annotated[tuple[TopicName, Principal], Depends(_stream_caller)]
Engine = Annotated[ManifestEngine, Depends(_engine)]
