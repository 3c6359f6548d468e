"""What routes are handed: settings, the Pulsar service, validated names."""

from typing import Annotated

from fastapi import Depends, Path, Request

from broker_gateway.manifests.engine import ManifestEngine
from broker_gateway.metrics import Metrics
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.service import PulsarService
from broker_gateway.settings import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _pulsar(request: Request) -> PulsarService:
    service: PulsarService = request.app.state.pulsar
    return service


def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def _engine(request: Request) -> ManifestEngine:
    return ManifestEngine(_settings(request).clusters, _pulsar(request).admins)


def _topic(
    tenant: Annotated[str, Path(description="Tenant name")],
    namespace: Annotated[str, Path(description="Namespace name")],
    topic: Annotated[str, Path(description="Topic name (persistent)")],
) -> TopicName:
    return TopicName.parse(tenant, namespace, topic)


AppSettings = Annotated[Settings, Depends(_settings)]
Pulsar = Annotated[PulsarService, Depends(_pulsar)]
AppMetrics = Annotated[Metrics, Depends(_metrics)]
Topic = Annotated[TopicName, Depends(_topic)]
Engine = Annotated[ManifestEngine, Depends(_engine)]
