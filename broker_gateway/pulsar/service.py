"""The gateway's connection to Pulsar: client, producers and admin clients, opened once."""

import asyncio
import logging

import pulsar
import pulsar.asyncio

from broker_gateway.errors import GatewayError
from broker_gateway.pulsar import publishing, reading
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.pulsar.codecs import Position, Start, TopicName
from broker_gateway.pulsar.errors import is_pulsar_error, translate
from broker_gateway.pulsar.messages import OutgoingMessage
from broker_gateway.pulsar.producers import ProducerCache
from broker_gateway.settings import Settings

log = logging.getLogger(__name__)


class PulsarService:
    """Owns every Pulsar resource; the app's lifespan opens and closes it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._retry_after_s = settings.broker_retry_after_s
        cluster = settings.data_cluster
        self.client = pulsar.asyncio.Client(
            cluster.service_url,
            operation_timeout_seconds=int(settings.pulsar_operation_timeout_s),
            connection_timeout_ms=int(settings.pulsar_connect_timeout_s * 1000),
            io_threads=settings.pulsar_io_threads,
            logger=logging.getLogger("pulsar.client"),
        )
        self.admins = {
            c.name: PulsarAdmin(
                c,
                timeout_s=settings.pulsar_operation_timeout_s,
                retry_after_s=self._retry_after_s,
            )
            for c in settings.clusters
        }
        self.admin = self.admins[cluster.name]
        self.producers = ProducerCache(self.client, settings.producer_idle_timeout_s)

    async def open(self) -> None:
        self.producers.start()

    async def close(self) -> None:
        await self.producers.close()
        for admin in self.admins.values():
            await admin.close()
        await self.client.close()

    async def check_clusters(self) -> dict[str, str | None]:
        """Each cluster's readiness problem, or None where it is ready."""

        async def check(admin: PulsarAdmin) -> str | None:
            try:
                await admin.ready(self._settings.readiness_timeout_s)
            except GatewayError as exc:
                return exc.detail
            return None

        names = list(self.admins)
        results = await asyncio.gather(*(check(self.admins[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def publish(
        self, topic: TopicName, messages: list[OutgoingMessage]
    ) -> list[Position | GatewayError]:
        """Raises: GatewayError when nothing could be sent."""
        return await publishing.publish(
            self.producers, topic, messages, retry_after_s=self._retry_after_s
        )

    async def read(
        self, topic: TopicName, start: Start, *, limit: int, wait_s: float, base64_only: bool
    ) -> reading.Page:
        """Raises: GatewayError (TopicNotFound, BrokerUnavailable, BrokerTimeout, ...)."""
        try:
            return await reading.read_page(
                self.client,
                self.admin,
                topic,
                start,
                limit=limit,
                wait_s=wait_s,
                base64_only=base64_only,
            )
        except Exception as exc:
            if is_pulsar_error(exc):
                raise translate(exc, self._retry_after_s) from exc
            raise
