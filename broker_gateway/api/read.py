"""GET /v1/topics/{tenant}/{namespace}/{topic}/messages: stateless replay."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from broker_gateway.api.deps import AppMetrics, AppSettings, Pulsar, Topic
from broker_gateway.api.responses import JSON
from broker_gateway.errors import InvalidRequest
from broker_gateway.pulsar.codecs import parse_start

router = APIRouter(tags=["streaming"])


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
    topic: Topic,
    pulsar: Pulsar,
    settings: AppSettings,
    metrics: AppMetrics,
    position: Annotated[
        str,
        Query(description="`earliest`, `latest`, `time:{RFC 3339 | epoch ms}` or a `next` cursor"),
    ] = "earliest",
    limit: Annotated[int, Query(ge=1, description="At most this many messages")] = 100,
    wait_ms: Annotated[
        int, Query(ge=0, description="Long poll: wait up to this long for a first message")
    ] = 0,
    encoding: Annotated[
        Literal["json", "base64"],
        Query(description="`base64` returns every payload as `data`"),
    ] = "json",
) -> JSON:
    """Read a page from `position`; `next` continues exactly after it.

    Reads use a non-durable reader: they create no subscription and move nobody's cursor.
    `limit` may not exceed the configured maximum (422); `wait_ms` above the configured cap
    is lowered to the cap.
    """
    if limit > settings.max_read_limit:
        raise InvalidRequest(f"limit {limit} is above the maximum {settings.max_read_limit}")
    start = parse_start(position)
    page = await pulsar.read(
        topic,
        start,
        limit=limit,
        wait_s=min(wait_ms, settings.max_wait_ms) / 1000,
        base64_only=encoding == "base64",
    )
    metrics.read.inc(len(page.messages))
    return JSON({"messages": page.messages, "next": page.next})
