"""Pulsar's admin REST API over httpx: one client per configured cluster."""

import logging
from typing import Any

import httpx

from broker_gateway.errors import (
    BrokerError,
    BrokerTimeout,
    BrokerUnavailable,
    Conflict,
    CredentialsRefused,
    NamespaceNotFound,
    NotFound,
    TenantNotFound,
    TopicNotFound,
)
from broker_gateway.pulsar.codecs import Position, TopicName
from broker_gateway.settings import Cluster

log = logging.getLogger(__name__)


class PulsarAdmin:
    """Admin calls against one cluster. Errors come back as the gateway's errors."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        timeout_s: float,
    ) -> None:
        self.cluster = cluster
        headers = {"Accept": "application/json"}
        if cluster.token is not None:
            headers["Authorization"] = f"Bearer {cluster.token.get_secret_value()}"
        self._http = httpx.AsyncClient(
            base_url=str(cluster.admin_url).rstrip("/"),
            timeout=httpx.Timeout(timeout_s),
            headers=headers,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def ready(self, timeout_s: float) -> None:
        """Raises: BrokerUnavailable or BrokerTimeout when the broker is not ready."""
        await self.request("GET", "/admin/v2/brokers/ready", timeout_s=timeout_s)

    async def last_position(self, topic: TopicName, partition: int) -> Position:
        """The position of the newest message in a topic, or one partition of it.

        Raises: TopicNotFound; BrokerUnavailable or BrokerTimeout.
        """
        try:
            body = await self.request(
                "GET", f"/admin/v2/persistent/{topic.partition(partition).path}/lastMessageId"
            )
        except NotFound as exc:
            raise TopicNotFound(f"topic {topic} does not exist") from exc
        return Position(
            ledger=body["ledgerId"],
            entry=body["entryId"],
            batch_index=body.get("batchIndex", -1),
            partition=partition,
        )

    async def explain_missing(self, topic: TopicName) -> NotFound:
        """Which part of a topic's name does not exist: tenant, namespace or the topic.

        Raises: BrokerUnavailable, BrokerTimeout, BrokerError.
        """
        try:
            namespaces = await self.request("GET", f"/admin/v2/namespaces/{topic.tenant}")
        except NotFound:
            return TenantNotFound(f"tenant {topic.tenant!r} does not exist")
        if f"{topic.tenant}/{topic.namespace}" not in namespaces:
            return NamespaceNotFound(f"namespace {topic.tenant}/{topic.namespace} does not exist")
        return TopicNotFound(
            f"topic {topic} does not exist and its namespace does not create topics on use"
        )

    async def ensure_topic(self, topic: TopicName, *, retention_minutes: int) -> None:
        """Create a non-partitioned topic if missing and set its retention.

        Raises: BrokerUnavailable, BrokerTimeout, BrokerError.
        """
        try:
            await self.request("PUT", f"/admin/v2/persistent/{topic.path}")
        except Conflict:
            pass
        await self.request(
            "POST",
            f"/admin/v2/persistent/{topic.path}/retention",
            json={"retentionTimeInMinutes": retention_minutes, "retentionSizeInMB": -1},
        )

    async def partitions(self, topic: TopicName) -> int:
        """The topic's partition count; 0 for a non-partitioned (or missing) topic."""
        body = await self.request("GET", f"/admin/v2/persistent/{topic.path}/partitions")
        return int(body.get("partitions", 0))

    async def subscription_properties(self, topic: TopicName, subscription: str) -> dict[str, str]:
        """Raises: NotFound when the topic or the subscription does not exist."""
        properties: dict[str, str] = await self.request(
            "GET", f"/admin/v2/persistent/{topic.path}/subscription/{subscription}/properties"
        )
        return properties

    async def create_subscription(
        self, topic: TopicName, subscription: str, *, earliest: bool, properties: dict[str, str]
    ) -> None:
        """A replicated subscription: where the topic replicates, Pulsar mirrors its
        position to the other clusters, for a failover.

        Raises: NotFound (no such topic); Conflict (it exists already)."""
        end = -1 if earliest else 2**63 - 1
        await self.request(
            "PUT",
            f"/admin/v2/persistent/{topic.path}/subscription/{subscription}",
            params={"replicated": "true"},
            json={"ledgerId": end, "entryId": end, "properties": properties},
        )

    async def set_subscription_properties(
        self, topic: TopicName, subscription: str, properties: dict[str, str]
    ) -> None:
        await self.request(
            "PUT",
            f"/admin/v2/persistent/{topic.path}/subscription/{subscription}/properties",
            json=properties,
        )

    async def delete_subscription(self, topic: TopicName, subscription: str) -> None:
        """Raises: NotFound."""
        await self.request(
            "DELETE",
            f"/admin/v2/persistent/{topic.path}/subscription/{subscription}",
            params={"force": "true"},
        )

    async def topic_stats(self, topic: TopicName) -> dict[str, Any]:
        """Stats of a topic, aggregated over partitions. Raises: NotFound."""
        partitioned = await self.partitions(topic) > 0
        path = "partitioned-stats" if partitioned else "stats"
        stats: dict[str, Any] = await self.request(
            "GET",
            f"/admin/v2/persistent/{topic.path}/{path}",
            params={"getEarliestTimeInBacklog": "true", "getPreciseBacklog": "true"},
        )
        return stats

    async def reset_subscription_to_time(
        self, topic: TopicName, subscription: str, time_ms: int
    ) -> None:
        await self.request(
            "POST",
            f"/admin/v2/persistent/{topic.path}/subscription/{subscription}/resetcursor/{time_ms}",
        )

    async def reset_subscription_after(
        self, topic: TopicName, subscription: str, position: Position
    ) -> None:
        """Point the subscription just after `position` (in its partition)."""
        await self.request(
            "POST",
            f"/admin/v2/persistent/{topic.partition(position.partition).path}"
            f"/subscription/{subscription}/resetcursor",
            json={
                "ledgerId": position.ledger,
                "entryId": position.entry,
                "batchIndex": position.batch_index,
                "partitionIndex": position.partition,
                "isExcluded": True,
            },
        )

    async def skip_all(self, topic: TopicName, subscription: str) -> None:
        await self.request(
            "POST", f"/admin/v2/persistent/{topic.path}/subscription/{subscription}/skip_all"
        )

    async def send(
        self, method: str, path: str, *, timeout_s: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One admin call, whatever its status.

        Raises: BrokerTimeout or BrokerUnavailable when the cluster does not answer.
        """
        name = self.cluster.name
        extra: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
        try:
            return await self._http.request(method, path, **kwargs, **extra)
        except httpx.TimeoutException as exc:
            raise BrokerTimeout(f"cluster {name} did not answer in time") from exc
        except httpx.TransportError as exc:
            raise BrokerUnavailable(f"cluster {name} is unreachable: {exc}") from exc

    async def request(
        self, method: str, path: str, *, timeout_s: float | None = None, **kwargs: Any
    ) -> Any:
        """One admin call; the decoded body, or None when there is none.

        Raises: NotFound (404), Conflict (409), CredentialsRefused (401, 403), BrokerError
        (other 4xx, with Pulsar's reason), BrokerUnavailable (5xx or unreachable), BrokerTimeout.
        """
        name = self.cluster.name
        response = await self.send(method, path, timeout_s=timeout_s, **kwargs)
        if response.status_code in (401, 403):
            # Pulsar answers 401 both without a token and for a role it does not authorize.
            missing = (
                "" if self.cluster.token else " (none set: give it a token in GATEWAY_CLUSTERS)"
            )
            raise CredentialsRefused(
                f"cluster {name} refused the gateway's credentials{missing} for "
                f"{method} {path}: {reason(response)}"
            )
        if response.status_code == 404:
            raise NotFound(f"not found on cluster {name}: {path}")
        if response.status_code == 409:
            raise Conflict(f"already exists on cluster {name}: {path}")
        if response.status_code >= 500:
            raise BrokerUnavailable(
                f"cluster {name} answered {response.status_code}",
            )
        if response.status_code >= 400:
            raise BrokerError(f"cluster {name} refused {method} {path}: {reason(response)}")
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:  # some endpoints label a plain "ok" as JSON
            return response.text


def reason(response: httpx.Response) -> str:
    """Pulsar's one-line explanation of an error answer."""
    try:
        body = response.json()
        # Pulsar's own errors carry a `reason`; Jetty's (e.g. without a token) a `message`.
        text = str(body.get("reason") or body.get("message") or response.text)
    except (ValueError, AttributeError):
        text = response.text
    if text.lstrip().startswith("<"):  # Jetty's HTML error page
        text = f"{response.status_code} {response.reason_phrase}"
    return text.strip().splitlines()[0] if text.strip() else str(response.status_code)
