"""POST /v1/topics/{tenant}/{namespace}/{topic}/messages"""

import binascii
import hashlib
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from starlette.datastructures import Headers

from broker_gateway import tracing
from broker_gateway.api.bodies import media_type, validated
from broker_gateway.api.deps import AppServices, PublishTopic, Services, authorize
from broker_gateway.api.responses import (
    JSON,
    TOPIC_PROBLEMS,
    FastRoute,
    inline_schema,
    problems,
)
from broker_gateway.errors import (
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    SchemaVersionUnknown,
    problem_for,
)
from broker_gateway.pulsar.codecs import TopicName, parse_time
from broker_gateway.pulsar.contracts import conform
from broker_gateway.pulsar.idempotency import Answer
from broker_gateway.pulsar.messages import RAW, OutgoingMessage
from broker_gateway.pulsar.publishing import Outcome, Persisted
from broker_gateway.settings import Settings

router = APIRouter(responses=TOPIC_PROBLEMS, tags=["streaming"])
PUBLISH_PATH = "/v1/topics/{tenant}/{namespace}/{topic}/messages"

NAME_PATTERN = r"^[A-Za-z0-9_.=:-]{1,255}$"
PROPERTY_HEADER = "x-message-property-"


def _to_epoch_ms(value: Any) -> Any:
    """RFC 3339 strings or integer epoch milliseconds, as epoch milliseconds."""
    if isinstance(value, str):
        return parse_time(value)
    return value


EpochMs = Annotated[int, BeforeValidator(_to_epoch_ms), Field(ge=0)]


class PublishMessage(BaseModel):
    """One message: exactly one of `value` (any JSON) or `data` (base64 bytes)."""

    model_config = ConfigDict(extra="forbid")

    value: Any = Field(default=None, description="Any JSON; stored as its JSON bytes.")
    data: str | None = Field(default=None, description="Base64 bytes, stored as given.")
    key: str | None = Field(
        default=None, description="Routes the message to a partition; per-key order holds."
    )
    ordering_key: str | None = Field(
        default=None, description="Overrides `key` for Key_Shared dispatch only."
    )
    properties: dict[str, str] = Field(default_factory=dict)
    event_time: EpochMs | None = Field(default=None, description="RFC 3339 or epoch ms.")
    deliver_after_ms: int | None = Field(
        default=None, ge=0, description="Deliver to subscriptions no earlier than this delay."
    )
    deliver_at: EpochMs | None = Field(
        default=None, description="Deliver to subscriptions no earlier than this time."
    )
    sequence_id: int | None = Field(
        default=None, ge=0, description="With `producer`: checked by broker deduplication."
    )

    @model_validator(mode="after")
    def _one_payload(self) -> "PublishMessage":
        given = self.model_fields_set
        if ("value" in given) == ("data" in given):
            raise ValueError("exactly one of 'value' or 'data' is required")
        if self.deliver_after_ms is not None and self.deliver_at is not None:
            raise ValueError("use one of 'deliver_after_ms' or 'deliver_at', not both")
        return self

    def outgoing(self) -> OutgoingMessage:
        value = RAW
        if self.data is None:
            value = self.value
            payload = orjson.dumps(value)
        else:
            try:
                payload = binascii.a2b_base64(self.data, strict_mode=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidRequest("'data' is not valid base64") from exc
        return OutgoingMessage(
            payload=payload,
            key=self.key,
            ordering_key=self.ordering_key,
            properties=self.properties,
            event_time_ms=self.event_time,
            deliver_at_ms=self.deliver_at,
            deliver_after_ms=self.deliver_after_ms,
            sequence_id=self.sequence_id,
            value=value,
        )


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[PublishMessage] = Field(min_length=1)
    producer: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description=(
            "A stable producer name. With per-message `sequence_id`s and deduplication "
            "enabled on the namespace, Pulsar drops a message whose sequence id it has "
            "already persisted for this producer: retries become effectively-once."
        ),
    )

    schema_version: int | None = Field(
        default=None,
        ge=0,
        description=(
            "On a topic with a schema: the version the values were written against. They "
            "are checked against it and published with it; a value that fits only another "
            "version is refused. Default: the topic's latest schema."
        ),
    )

    @model_validator(mode="after")
    def _sequence_ids_need_a_producer(self) -> "PublishRequest":
        if self.producer is None and any(m.sequence_id is not None for m in self.messages):
            raise ValueError("'sequence_id' needs a 'producer' to belong to")
        return self


class PublishResult(BaseModel):
    index: int
    message_id: str | None = None
    duplicate: bool | None = Field(
        default=None, description="True when the broker dropped it as a duplicate sequence id."
    )
    cluster: str | None = Field(
        default=None,
        description="The Pulsar cluster that persisted it: home (the first configured), or "
        "the peer it failed over to while home was down. `message_id` is that cluster's.",
    )
    error: dict[str, str] | None = None


class PublishResponse(BaseModel):
    results: list[PublishResult]


_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": inline_schema(PublishRequest)},
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": (
                "Any other Content-Type: one message whose bytes are the body. Headers: "
                "X-Message-Key, X-Message-Ordering-Key, X-Message-Event-Time, "
                "X-Message-Deliver-After-Ms, X-Message-Deliver-At, "
                "X-Message-Property-{name} (names arrive lower-cased), X-Schema-Version "
                "(as `schema_version`). On a topic with a schema, the bytes must decode "
                "under it."
            ),
        },
    },
}


@router.post(
    PUBLISH_PATH,
    summary="Publish messages",
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={
        200: {
            "model": PublishResponse,
            "description": "Every message is persisted.",
            "headers": {
                "Pulsar-Cluster": {
                    "description": "The clusters that persisted the messages (each result's "
                    "`cluster`), comma-separated: a peer's name during a failover.",
                    "schema": {"type": "string"},
                }
            },
        },
        **problems(409),
        207: {"model": PublishResponse, "description": "Some messages failed; see `error`."},
    },
)
async def publish(
    request: Request,
    topic: PublishTopic,
    services: AppServices,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="A retry with the same key and body returns the first answer and "
            "stores nothing twice, on any replica, for GATEWAY_IDEMPOTENCY_TTL_S, even after "
            "the replica that served the first attempt died mid-request. While that attempt "
            "may still be publishing: 409 `idempotency_key_in_use` with Retry-After. "
            "Messages published under a key carry the property "
            "`broker-gateway-idempotency`.",
        ),
    ] = None,
) -> JSON:
    """Publish a batch (JSON) or one raw message (any other Content-Type).

    200 only once the broker has persisted every message; 207 lists an error for each one
    that failed; if all fail, the response is the first failure's problem (e.g. 503).
    Messages keep their order within the batch.

    **Data contracts.** On a topic with a registered `JSON` or `AVRO` schema, each `value`
    must conform to its Avro record definition: fields of the declared types, required
    ones present (a field with a default or a nullable one may be left out), and no field
    the schema does not declare. `data` must be bytes that decode under the schema.
    Primitive schemas (`STRING`, `INT8` to `INT64`, `FLOAT`, `DOUBLE`, `BOOLEAN`) take a
    JSON value of their kind. Conforming messages are published with the topic's schema,
    so Pulsar stamps its version on each (`AVRO` values are stored as Avro binary; reads
    return them as JSON). One message that does not conform refuses the whole request:
    `422 schema_violation`, listing each failure's message `index`, JSON `path` and
    `error`, with the `schema_version` checked; nothing is published. `PROTOBUF`,
    `PROTOBUF_NATIVE` and other types: `422 schema_not_supported`. The gateway never
    registers or changes a schema: contracts change through manifests.
    """
    return await _publish(request, topic, services, idempotency_key)


async def publish_route(request: Request) -> JSON:
    """The same route as a plain Starlette one, placed ahead of FastAPI's (which documents
    it): FastAPI's resolving of dependencies and parameters would cost about a sixth of a
    single-message publish. Same checks, in the same order, same errors."""
    services: Services = request.app.state.services
    params = request.path_params
    topic = authorize(
        services, request, "publish", params["tenant"], params["namespace"], params["topic"]
    )
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise RequestValidationError(
            [
                {
                    "loc": ("header", "Idempotency-Key"),
                    "msg": "must be 1 to 255 characters",
                    "type": "string_length",
                }
            ]
        )
    return await _publish(request, topic, services, idempotency_key)


async def _publish(
    request: Request, topic: TopicName, services: Services, idempotency_key: str | None
) -> JSON:
    body = await request.body()
    producer, schema_version, messages = _parse(request.headers, body, services.settings)
    services.limits.published(topic.tenant, len(body))
    metrics = services.metrics
    contract = await services.pulsar.contract(topic, schema_version)
    if contract is not None:
        conform(contract, messages)
    elif schema_version is not None:
        raise SchemaVersionUnknown(f"topic {topic} has no schema")

    async def send(batch: list[OutgoingMessage]) -> list[Outcome]:
        started = time.perf_counter()
        outcomes = await services.pulsar.publish(topic, batch, producer, contract)
        metrics.pulsar_latency.labels("send").observe(time.perf_counter() - started)
        failed = sum(isinstance(o, GatewayError) for o in outcomes)
        metrics.published.labels(topic.tenant, "persisted").inc(len(outcomes) - failed)
        metrics.published.labels(topic.tenant, "failed").inc(failed)
        home = services.pulsar.regions.home.name
        for outcome in outcomes:
            if isinstance(outcome, Persisted) and outcome.cluster != home:
                metrics.failed_over.labels(outcome.cluster).inc()
        return outcomes

    with tracing.sending(topic, messages, request.headers):
        if idempotency_key is None:
            answer = _answer(await send(messages))
            replayed = False
        else:
            answer, replayed = await services.pulsar.idempotency.answer(
                topic,
                idempotency_key,
                request_fingerprint(request.headers, body),
                messages,
                send,
                _answer,
            )
    headers = {CLUSTER_HEADER: ", ".join(_clusters(answer.body))}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
        metrics.idempotency_replays.labels(topic.tenant).inc()
    else:  # once a request, however many sends an in-doubt retry took
        metrics.published_bytes.labels(topic.tenant).inc(len(body))
    return JSON(answer.body, status_code=answer.status, headers=headers)


# Which clusters persisted the messages of a publish, in the order of the messages.
CLUSTER_HEADER = "Pulsar-Cluster"


def _clusters(body: dict[str, Any]) -> dict[str, None]:
    return dict.fromkeys(r["cluster"] for r in body.get("results", ()) if r.get("cluster"))


# Ahead of every FastAPI route: see publish_route.
fast_routes = [FastRoute(PUBLISH_PATH, publish_route, methods=["POST"])]


def _parse(
    headers: Headers, body: bytes, settings: Settings
) -> tuple[str | None, int | None, list[OutgoingMessage]]:
    """The producer name, the schema version pinned, and the messages.

    Raises: RequestValidationError, InvalidRequest.
    """
    if media_type(headers) != "application/json":
        version = headers.get("x-schema-version")
        if version is not None and not version.isdigit():
            raise InvalidRequest("X-Schema-Version must be a schema version number")
        return None, None if version is None else int(version), [_raw_message(headers, body)]
    request = validated(PublishRequest, body)
    if len(request.messages) > settings.max_messages_per_request:
        raise PayloadTooLarge(
            f"{len(request.messages)} messages in one request; the limit is "
            f"{settings.max_messages_per_request}"
        )
    return request.producer, request.schema_version, [m.outgoing() for m in request.messages]


def _raw_message(headers: Headers, body: bytes) -> OutgoingMessage:
    def header_ms(name: str) -> int | None:
        value = headers.get(name)
        return None if value is None else parse_time(value)

    after = headers.get("x-message-deliver-after-ms")
    if after is not None and not after.isdigit():
        raise InvalidRequest("X-Message-Deliver-After-Ms must be a whole number of ms")
    return OutgoingMessage(
        payload=body,
        key=headers.get("x-message-key"),
        ordering_key=headers.get("x-message-ordering-key"),
        properties={
            name.removeprefix(PROPERTY_HEADER): value
            for name, value in headers.items()
            if name.startswith(PROPERTY_HEADER) and len(name) > len(PROPERTY_HEADER)
        },
        event_time_ms=header_ms("x-message-event-time"),
        deliver_at_ms=header_ms("x-message-deliver-at"),
        deliver_after_ms=None if after is None else int(after),
    )


def request_fingerprint(headers: Headers, body: bytes) -> str:
    """What makes two requests the same: the body and every header that shapes a message."""
    digest = hashlib.sha256(body)
    for name, value in sorted(headers.items()):
        if name == "content-type" or name.startswith("x-message-"):
            digest.update(f"\n{name}:{value}".encode())
    return digest.hexdigest()


def _answer(outcomes: list[Outcome]) -> Answer:
    failures = [o for o in outcomes if isinstance(o, GatewayError)]
    if failures and len(failures) == len(outcomes):
        raise failures[0]
    results: list[dict[str, Any]] = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, GatewayError):
            code = problem_for(outcome).code
            results.append({"index": index, "error": {"code": code, "detail": outcome.detail}})
        elif outcome is None:
            results.append({"index": index, "message_id": None, "duplicate": True})
        else:
            position, cluster = outcome
            results.append({"index": index, "message_id": str(position), "cluster": cluster})
    return Answer(207 if failures else 200, {"results": results})
