"""POST /v1/topics/{tenant}/{namespace}/{topic}/messages"""

import base64
import binascii
from typing import Annotated, Any

import orjson
from fastapi import APIRouter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from broker_gateway.api.deps import AppMetrics, AppSettings, Pulsar, Topic
from broker_gateway.api.responses import JSON
from broker_gateway.errors import GatewayError, InvalidRequest, problem_for
from broker_gateway.pulsar.codecs import Position, parse_time
from broker_gateway.pulsar.messages import OutgoingMessage

router = APIRouter(tags=["streaming"])


def _epoch_ms(value: Any) -> Any:
    """RFC 3339 strings or integer epoch milliseconds, as epoch milliseconds."""
    if isinstance(value, str):
        return parse_time(value)
    return value


EpochMs = Annotated[int, BeforeValidator(_epoch_ms), Field(ge=0)]


class PublishMessage(BaseModel):
    """One message: exactly one of `value` (any JSON) or `data` (base64 bytes)."""

    model_config = ConfigDict(extra="forbid")

    value: Any = Field(default=None, description="Any JSON; stored as its JSON bytes.")
    data: str | None = Field(default=None, description="Base64 bytes, stored as given.")
    key: str | None = Field(default=None, description="Partition/routing key.")
    ordering_key: str | None = None
    properties: dict[str, str] = Field(default_factory=dict)
    event_time: EpochMs | None = Field(default=None, description="RFC 3339 or epoch ms.")
    deliver_after_ms: int | None = Field(default=None, ge=0)
    deliver_at: EpochMs | None = Field(default=None, description="RFC 3339 or epoch ms.")
    sequence_id: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_payload(self) -> "PublishMessage":
        given = self.model_fields_set
        if ("value" in given) == ("data" in given):
            raise ValueError("exactly one of 'value' or 'data' is required")
        if self.deliver_after_ms is not None and self.deliver_at is not None:
            raise ValueError("use one of 'deliver_after_ms' or 'deliver_at', not both")
        return self

    def payload(self) -> bytes:
        if self.data is None:
            return orjson.dumps(self.value)
        try:
            return base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest("'data' is not valid base64") from exc


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[PublishMessage] = Field(min_length=1)


class PublishResult(BaseModel):
    index: int
    message_id: str | None = None
    error: dict[str, str] | None = None


class PublishResponse(BaseModel):
    results: list[PublishResult]


@router.post(
    "/v1/topics/{tenant}/{namespace}/{topic}/messages",
    summary="Publish messages",
    responses={
        200: {"model": PublishResponse, "description": "Every message is persisted."},
        207: {"model": PublishResponse, "description": "Some messages failed; see `error`."},
    },
)
async def publish(
    body: PublishRequest,
    topic: Topic,
    pulsar: Pulsar,
    settings: AppSettings,
    metrics: AppMetrics,
) -> JSON:
    """Publish a batch; 200 only once the broker has persisted every message.

    If some messages fail, 207 lists an error for each of them; if all fail, the response is
    the first failure's problem (e.g. 503). Messages keep their order within the batch.
    """
    if len(body.messages) > settings.max_messages_per_request:
        raise InvalidRequest(
            f"{len(body.messages)} messages in one request; the limit is "
            f"{settings.max_messages_per_request}"
        )
    outgoing = [
        OutgoingMessage(
            payload=m.payload(),
            key=m.key,
            ordering_key=m.ordering_key,
            properties=m.properties,
            event_time_ms=m.event_time,
            deliver_at_ms=m.deliver_at,
            deliver_after_ms=m.deliver_after_ms,
            sequence_id=m.sequence_id,
        )
        for m in body.messages
    ]
    outcomes = await pulsar.publish(topic, outgoing)
    return _respond(outcomes, metrics)


def _respond(outcomes: list[Position | GatewayError], metrics: AppMetrics) -> JSON:
    failures = [o for o in outcomes if isinstance(o, GatewayError)]
    metrics.published.labels("persisted").inc(len(outcomes) - len(failures))
    metrics.published.labels("failed").inc(len(failures))
    if failures and len(failures) == len(outcomes):
        raise failures[0]
    results: list[dict[str, Any]] = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, GatewayError):
            code = problem_for(outcome).code
            results.append({"index": index, "error": {"code": code, "detail": outcome.detail}})
        else:
            results.append({"index": index, "message_id": str(outcome)})
    return JSON({"results": results}, status_code=207 if failures else 200)
