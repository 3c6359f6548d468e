"""What manifests need from Pulsar's admin REST API, in the manifests' own terms.

Each method reads or writes one kind of object on one cluster and converts between
Pulsar's JSON and the canonical field values the planner compares. A field that is None
is inherited (from the namespace or the broker), and writing None removes the setting.
"""

from collections.abc import Mapping
from typing import Any, Final

from pydantic import SecretStr

from broker_gateway.errors import BrokerError, Conflict, NotFound
from broker_gateway.manifests.model import BacklogQuota, Retention, Schema
from broker_gateway.manifests.units import INFINITE
from broker_gateway.pulsar.admin import PulsarAdmin, reason
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.queues import SubscriptionConfig, configure

Fields = dict[str, Any]

_V2: Final = "/admin/v2"
_MIB: Final = 1024 * 1024
_DELAYED_TICK_MS: Final = 1000
_QUOTA_TYPE: Final = {"backlogQuotaType": "destination_storage"}
_PARTITION: Final = "-partition-"
_TOKEN_PLUGIN: Final = "org.apache.pulsar.client.impl.auth.AuthenticationToken"


class ManifestAdmin:
    """Tenants, namespaces, topics, schemas and subscriptions on one cluster.

    `peer_tokens` are the tokens of the other clusters, by name: a peer registered here
    carries its token, so that this cluster's replicator can authenticate to it.
    """

    def __init__(
        self, admin: PulsarAdmin, peer_tokens: Mapping[str, SecretStr] | None = None
    ) -> None:
        self._admin = admin
        self._peer_tokens = dict(peer_tokens or {})
        self.cluster = admin.cluster.name

    async def _get(self, path: str, **kwargs: Any) -> Any:
        return await self._admin.request("GET", _V2 + path, **kwargs)

    async def _call(self, method: str, path: str, **kwargs: Any) -> None:
        await self._admin.request(method, _V2 + path, **kwargs)

    # Peer clusters -------------------------------------------------------------------

    async def peers(self) -> dict[str, Fields]:
        """Every cluster registered here, with the URLs this cluster uses to reach it."""
        peers = {}
        for name in await self._get("/clusters"):
            data = await self._get(f"/clusters/{name}")
            peers[name] = {
                "service_url": data.get("brokerServiceUrl"),
                "admin_url": data.get("serviceUrl"),
            }
        return peers

    async def put_peer(self, name: str, fields: Mapping[str, Any], *, create: bool) -> None:
        """Register (or update) a peer cluster, with its token when it has one.

        The token goes to Pulsar only: it is no field of the plan, so no plan, export or
        log shows it (and a plan cannot see a registration whose token is stale).
        """
        body = {"serviceUrl": fields["admin_url"], "brokerServiceUrl": fields["service_url"]}
        token = self._peer_tokens.get(name)
        if token is not None:
            body["authenticationPlugin"] = _TOKEN_PLUGIN
            body["authenticationParameters"] = f"token:{token.get_secret_value()}"
        await self._call("PUT" if create else "POST", f"/clusters/{name}", json=body)

    # Tenants -------------------------------------------------------------------------

    async def tenants(self) -> list[str]:
        names: list[str] = await self._get("/tenants")
        return names

    async def tenant(self, name: str) -> Fields | None:
        try:
            data = await self._get(f"/tenants/{name}")
        except NotFound:
            return None
        return {
            "admin_roles": tuple(sorted(data.get("adminRoles") or ())),
            "clusters": tuple(sorted(data.get("allowedClusters") or ())),
        }

    async def put_tenant(self, name: str, fields: Mapping[str, Any], *, create: bool) -> None:
        body = {
            "adminRoles": list(fields["admin_roles"]),
            "allowedClusters": list(fields["clusters"]),
        }
        await self._call("PUT" if create else "POST", f"/tenants/{name}", json=body)

    # Namespaces ----------------------------------------------------------------------

    async def namespaces(self, tenant: str) -> list[str]:
        try:
            names: list[str] = await self._get(f"/namespaces/{tenant}")
        except NotFound:
            return []
        return names

    async def namespace(self, name: str) -> Fields | None:
        try:
            policies = await self._get(f"/namespaces/{name}")
        except NotFound:
            return None
        retention = policies.get("retention_policies")
        quota = (policies.get("backlog_quota_map") or {}).get("destination_storage")
        delayed = policies.get("delayed_delivery_policies")
        compatibility = policies.get("schema_compatibility_strategy")
        return {
            "replication": tuple(sorted(policies.get("replication_clusters") or ())),
            "retention": _retention(retention),
            "message_ttl": policies.get("message_ttl_in_seconds"),
            "deduplication": policies.get("deduplicationEnabled"),
            "backlog_quota": None
            if quota is None
            else BacklogQuota(size=_megabytes(quota["limitSize"]), policy=quota["policy"]),
            "schema_compatibility": None if compatibility in (None, "UNDEFINED") else compatibility,
            "schema_validation_enforced": policies.get("schema_validation_enforced") or None,
            "delayed_delivery": None if delayed is None else bool(delayed.get("active")),
        }

    async def create_namespace(self, name: str) -> None:
        try:
            await self._call("PUT", f"/namespaces/{name}")
        except Conflict:
            pass  # created meanwhile (by another apply): what we wanted

    async def set_namespace_field(self, name: str, field: str, value: Any) -> None:
        base = f"/namespaces/{name}"
        if field == "replication":
            await self._call("POST", f"{base}/replication", json=list(value))
        elif field == "retention":
            await self._set_or_delete(f"{base}/retention", _retention_body(value))
        elif field == "message_ttl":
            await self._set_or_delete(f"{base}/messageTTL", value)
        elif field == "deduplication":
            await self._set_or_delete(f"{base}/deduplication", value)
        elif field == "backlog_quota":
            if value is None:
                await self._call("DELETE", f"{base}/backlogQuota", params=_QUOTA_TYPE)
            else:
                body = {"limitSize": _bytes(value.size), "limitTime": -1, "policy": value.policy}
                await self._call("POST", f"{base}/backlogQuota", params=_QUOTA_TYPE, json=body)
        elif field == "schema_compatibility":
            await self._call(
                "PUT", f"{base}/schemaCompatibilityStrategy", json=value or "UNDEFINED"
            )
        elif field == "schema_validation_enforced":
            await self._call("POST", f"{base}/schemaValidationEnforced", json=bool(value))
        elif field == "delayed_delivery":
            delayed = None if value is None else {"active": value, "tickTime": _DELAYED_TICK_MS}
            await self._set_or_delete(f"{base}/delayedDelivery", delayed)
        else:  # pragma: no cover - the planner only produces the fields above
            raise AssertionError(f"unknown namespace field {field}")

    async def delete_namespace(self, name: str) -> None:
        """Brokers refuse a forced namespace deletion by default: the plan deletes the
        namespace's topics first."""
        await self._call("DELETE", f"/namespaces/{name}")

    # Topics --------------------------------------------------------------------------

    async def topics(self, namespace: str) -> dict[str, int]:
        """The namespace's topics (`tenant/namespace/topic`) and their partition counts."""
        try:
            partitioned = await self._get(f"/persistent/{namespace}/partitioned")
            every = await self._get(f"/persistent/{namespace}")
        except NotFound:
            return {}
        topics = {}
        for url in partitioned:
            name = url.removeprefix("persistent://")
            topics[name] = await self.partitions(name)
        for url in every:
            name = url.removeprefix("persistent://")
            base = name.rsplit(_PARTITION, 1)[0] if _PARTITION in name else name
            if base not in topics and not name.rsplit("/", 1)[-1].startswith("__"):
                topics[name] = 0
        return topics

    async def partitions(self, topic: str) -> int:
        data = await self._get(f"/persistent/{topic}/partitions")
        return int(data.get("partitions", 0))

    async def topic(self, name: str, partitions: int, *, with_schema: bool) -> Fields:
        base = f"/persistent/{name}"
        fields: Fields = {
            "partitions": partitions,
            "replication": await self._topic_policy(f"{base}/replication"),
            "retention": _retention(await self._topic_policy(f"{base}/retention")),
            "message_ttl": await self._topic_policy(f"{base}/messageTTL"),
            "deduplication": await self._topic_policy(f"{base}/deduplicationEnabled"),
        }
        if fields["replication"] is not None:
            fields["replication"] = tuple(sorted(fields["replication"]))
        if with_schema:
            fields["schema"] = await self.schema(name)
        return fields

    async def _topic_policy(self, path: str) -> Any:
        value = await self._get(path)
        return None if value in (None, "", [], {}) else value

    async def create_topic(self, name: str, partitions: int) -> None:
        try:
            if partitions:
                await self._call("PUT", f"/persistent/{name}/partitions", json=partitions)
            else:
                await self._call("PUT", f"/persistent/{name}")
        except Conflict:
            pass  # created meanwhile, e.g. by the replicator of a peer cluster

    async def set_topic_field(self, name: str, field: str, value: Any) -> None:
        base = f"/persistent/{name}"
        if field == "partitions":
            await self._call("POST", f"{base}/partitions", json=value)
        elif field == "replication":
            await self._set_or_delete(f"{base}/replication", None if value is None else list(value))
        elif field == "retention":
            await self._set_or_delete(f"{base}/retention", _retention_body(value))
        elif field == "message_ttl":
            if value is None:
                await self._call("DELETE", f"{base}/messageTTL")
            else:
                await self._call("POST", f"{base}/messageTTL", params={"messageTTL": value})
        elif field == "deduplication":
            await self._set_or_delete(f"{base}/deduplicationEnabled", value)
        elif field == "schema":
            await self.put_schema(name, value)
        else:  # pragma: no cover - the planner only produces the fields above
            raise AssertionError(f"unknown topic field {field}")

    async def delete_topic(self, name: str, partitions: int) -> None:
        path = f"/persistent/{name}/partitions" if partitions else f"/persistent/{name}"
        await self._call("DELETE", path, params={"force": "true"})

    # Schemas -------------------------------------------------------------------------

    async def schema(self, topic: str) -> Schema | None:
        try:
            data = await self._get(f"/schemas/{topic}/schema")
        except NotFound:
            return None
        definition = data.get("data") or None
        return Schema(
            type=data["type"], definition=definition, properties=data.get("properties") or {}
        )

    async def put_schema(self, topic: str, schema: Schema) -> None:
        body = {"type": schema.type, "schema": schema.data(), "properties": schema.properties}
        await self._call("POST", f"/schemas/{topic}/schema", json=body)

    async def schema_refusal(self, topic: str, schema: Schema) -> str | None:
        """Why the namespace's compatibility rule refuses this schema, or None if it accepts it.

        Raises: BrokerUnavailable, BrokerTimeout.
        """
        body = {"type": schema.type, "schema": schema.data(), "properties": schema.properties}
        response = await self._admin.send("POST", f"{_V2}/schemas/{topic}/compatibility", json=body)
        text = reason(response)
        if response.is_success:
            verdict = response.json() if response.content else {}
            if verdict.get("compatibility", True):
                return None
            return f"incompatible under {verdict.get('schemaCompatibilityStrategy', 'its rule')}"
        # Pulsar answers an incompatible schema with a 500 carrying the exception's message.
        if "Incompatible" in response.text or response.status_code in (409, 422):
            return text.removeprefix("Message: ").strip()
        raise BrokerError(f"cluster {self.cluster} could not check the schema: {text}")

    # Subscriptions -------------------------------------------------------------------

    async def subscriptions(self, topic: str, partitions: int) -> dict[str, Fields]:
        """Durable subscriptions of a topic and their configuration."""
        path = "partitioned-stats" if partitions else "stats"
        try:
            stats = await self._get(f"/persistent/{topic}/{path}")
        except NotFound:
            return {}
        found = {}
        for name, sub in (stats.get("subscriptions") or {}).items():
            if not sub.get("isDurable", True) or name.startswith("pulsar.repl."):
                continue
            config = SubscriptionConfig.from_properties(sub.get("subscriptionProperties") or {})
            found[name] = config.fields()
        return found

    async def put_subscription(self, key: str, fields: Mapping[str, Any]) -> None:
        """Create or update: the same code as `PUT .../subscriptions/{name}`, dead-letter
        topic and replicas' refresh included."""
        topic_path, name = key.rsplit("/", 1)
        topic = TopicName.parse(*topic_path.split("/"))
        await configure(self._admin, topic, name, SubscriptionConfig.model_validate(fields))

    async def delete_subscription(self, key: str) -> None:
        topic_path, name = key.rsplit("/", 1)
        await self._admin.delete_subscription(TopicName.parse(*topic_path.split("/")), name)

    async def _set_or_delete(self, path: str, body: Any) -> None:
        if body is None:
            await self._call("DELETE", path)
        else:
            await self._call("POST", path, json=body)


def _retention(data: dict[str, Any] | None) -> Retention | None:
    if not data:
        return None
    minutes = data["retentionTimeInMinutes"]
    return Retention(time=INFINITE if minutes < 0 else minutes * 60, size=data["retentionSizeInMB"])


def _retention_body(value: Retention | None) -> dict[str, int] | None:
    if value is None:
        return None
    minutes = INFINITE if value.time == INFINITE else value.time // 60
    return {"retentionTimeInMinutes": minutes, "retentionSizeInMB": value.size}


def _bytes(megabytes: int) -> int:
    return INFINITE if megabytes == INFINITE else megabytes * _MIB


def _megabytes(size_bytes: int) -> int:
    return INFINITE if size_bytes < 0 else size_bytes // _MIB
