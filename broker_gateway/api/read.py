"""GET /v1/topics/{tenant}/{namespace}/{topic}/messages: stateless replay."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from broker_gateway.api.deps import AppServices, ConsumeTopic
from broker_gateway.api.responses import JSON, TOPIC_PROBLEMS
from broker_gateway.errors import InvalidRequest
from broker_gateway.pulsar.codecs import parse_start
from broker_gateway.pulsar.messages import render

router = APIRouter(responses=TOPIC_PROBLEMS, tags=["streaming"])

Position = Annotated[
    str,
    Query(
        description="`earliest`, `latest`, `time:{RFC 3339 | epoch ms}` (the first message "
        "published at or after it) or a `next` cursor (exclusive: continue after it)"
    ),
]
Encoding = Annotated[
    Literal["json", "base64"],
    Query(
        description="`json`: JSON payloads as `value`, others as base64 `data`; "
        "`base64`: every payload as `data`"
    ),
]


class Message(BaseModel):
    message_id: str
    key: str | None
    ordering_key: str | None
    properties: dict[str, str]
    publish_time: int
    event_time: int | None
    value: Any = None
    data: str | None = None


class ReadResponse(BaseModel):
    messages: list[Message]
    next: str


@router.get(
    "/v1/topics/{tenant}/{namespace}/{topic}/messages",
    summary="Read messages",
    responses={200: {"model": ReadResponse}},
)
async def read(
    topic: ConsumeTopic,
    services: AppServices,
    position: Position = "earliest",
    limit: Annotated[int, Query(ge=1, description="At most this many messages")] = 100,
    wait_ms: Annotated[
        int, Query(ge=0, description="Long poll: wait up to this long for a first message")
    ] = 0,
    encoding: Encoding = "json",
) -> JSON:
    """Read a page from `position`; `next` continues exactly after it, on any replica.

    Reads use non-durable readers: they create no durable subscription and move nobody's
    cursor (a replica keeps a page's reader a few seconds, for the page after it).
    On a partitioned topic the page merges partitions by publish time; order per key holds.
    A topic that does not exist is created on first use if its namespace allows it
    (Pulsar's auto-creation policy), else 404 `topic_not_found`.
    `limit` above the configured maximum is 422; `wait_ms` above the cap is lowered to it.
    """
    if limit > services.settings.max_read_limit:
        raise InvalidRequest(
            f"limit {limit} is above the maximum {services.settings.max_read_limit}"
        )
    start = parse_start(position, topic)
    deliveries, cursor = await services.pulsar.read(
        topic,
        start,
        limit=limit,
        wait_s=min(wait_ms, services.settings.max_wait_ms) / 1000,
        stop=services.draining.event,  # a replica shutting down answers with what it has
        cursor=position if start.kind == "after" else None,
    )
    services.metrics.delivered.labels(topic.tenant, "read").inc(len(deliveries))
    base64_only = encoding == "base64"
    decoders = await services.pulsar.decoders(topic, (d.message for d in deliveries))
    return JSON(
        {
            "messages": [
                render(d.message, d.position, base64_only=base64_only, decoders=decoders)
                for d in deliveries
            ],
            "next": cursor,
        }
    )
