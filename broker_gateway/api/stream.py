"""GET /v1/topics/{tenant}/{namespace}/{topic}/stream: follow a topic live."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from broker_gateway.api.deps import (
    AppServices,
    ConsumeTopic,
    CurrentPrincipal,
    Services,
    StreamCaller,
)
from broker_gateway.api.read import Encoding, Position
from broker_gateway.api.responses import TOPIC_PROBLEMS
from broker_gateway.errors import GatewayError, problem_body, problem_for
from broker_gateway.pulsar.codecs import TopicName, parse_start
from broker_gateway.pulsar.contracts import Contract
from broker_gateway.pulsar.messages import render
from broker_gateway.pulsar.reading import Delivery, TopicReader

router = APIRouter(responses=TOPIC_PROBLEMS, tags=["streaming"])

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
BATCH = 100
_SHUTTING_DOWN = {"reason": "this replica is shutting down: reconnect to resume"}
_MOVED = {"reason": "the topic's cluster went down: reconnect to resume where it is served now"}


def _reconnect(ndjson: bool, why: dict[str, str]) -> bytes:
    if ndjson:
        return orjson.dumps({"reconnect": why}) + b"\n"
    return b"event: reconnect\ndata: " + orjson.dumps(why) + b"\n\n"


class _Stream(StreamingResponse):
    """A streaming response that runs `cleanup` however it ends (done, error, disconnect)."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        cleanup: Callable[[], Awaitable[None]],
        media_type: str,
    ) -> None:
        super().__init__(
            content,
            media_type=media_type,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()


@router.get(
    "/v1/topics/{tenant}/{namespace}/{topic}/stream",
    summary="Follow a topic live",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events, or NDJSON with `Accept: application/x-ndjson`",
            "content": {
                SSE: {"schema": {"type": "string"}},
                NDJSON: {"schema": {"type": "string"}},
            },
        }
    },
)
async def stream(
    request: Request,
    caller: StreamCaller,
    services: AppServices,
    position: Position = "latest",
    encoding: Encoding = "json",
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="Resume exactly after this event's cursor"),
    ] = None,
) -> StreamingResponse:
    """Follow a topic from `position` (default `latest`) as messages arrive.

    SSE: each event's `id:` is the cursor after its message and `data:` is one Message;
    reconnecting with `Last-Event-ID` resumes with no gap and no repeat. NDJSON: one Message
    per line, with its `cursor`. Idle connections get a heartbeat (an SSE comment, or an
    empty NDJSON line) every GATEWAY_STREAM_HEARTBEAT_S. An error after the stream started
    ends it with a final `event: error` (NDJSON: an `{"error": problem}` line). A replica
    that is shutting down ends it with `event: reconnect` (NDJSON: a `{"reconnect": ...}`
    line): reconnect, with Last-Event-ID, and another replica resumes it. So does a
    failover: when the cluster the stream reads goes down, the stream ends with `reconnect`,
    and the reconnection resumes in the cluster serving the topic now, from the publish
    time of the last event (see the README's Region failover: messages of that millisecond
    may come twice).
    """
    topic, principal = caller
    start = parse_start(last_event_id or position, topic)
    ndjson = NDJSON in request.headers.get("accept", "")
    stack = AsyncExitStack()
    stack.enter_context(services.streams.hold(principal.name))
    try:
        # Opened before the response starts, so a bad topic is still a 404, not an event.
        reader = await stack.enter_async_context(
            services.pulsar.reader(topic, start, queue_size=BATCH)
        )
    except BaseException:
        await stack.aclose()
        raise
    events = _events(services, topic, reader, ndjson, base64_only=encoding == "base64")
    return _Stream(events, stack.aclose, NDJSON if ndjson else SSE)


class StreamToken(BaseModel):
    token: str = Field(description="Pass it as `?access_token=` to this topic's stream.")
    expires_at: str = Field(description="When it stops opening streams (RFC 3339, UTC).")
    expires_in_s: int = Field(description="Seconds until then.")
    stream_url: str = Field(description="The stream's path with the token in it.")


@router.post(
    "/v1/topics/{tenant}/{namespace}/{topic}/stream-tokens",
    summary="Make a stream token (for browsers)",
    response_model=StreamToken,
)
async def stream_token(
    topic: ConsumeTopic, services: AppServices, principal: CurrentPrincipal
) -> StreamToken:
    """A short-lived token that opens this topic's live stream as `?access_token=`, for
    clients that cannot send an Authorization header: a browser's `EventSource` cannot.

    Why a token in the URL and not a cookie: the gateway is an API called with Bearer
    tokens from other origins; a cookie would need credentialed CORS and CSRF defences on
    every route, where a stream token opens one stream and nothing else. It names the caller
    and this topic, grants `consume` on it alone, is valid for GATEWAY_STREAM_TOKEN_TTL_S
    (5 minutes; an EventSource reconnects with the same URL until then), and no other route
    accepts it, not even as a Bearer token. Query strings are never logged. Needs `consume`
    on the tenant.
    """
    token, expires = services.stream_tokens.mint(principal, topic.tenant, topic.path)
    return StreamToken(
        token=token,
        expires_at=datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z"),
        expires_in_s=services.stream_tokens.ttl_s,
        stream_url=f"/v1/topics/{topic.path}/stream?access_token={token}",
    )


async def _events(
    services: Services, topic: TopicName, reader: TopicReader, ndjson: bool, *, base64_only: bool
) -> AsyncIterator[bytes]:
    encode = _ndjson if ndjson else _sse
    yield b"\n" if ndjson else b": connected\n\n"
    # The stream ends when the replica drains, or when the reader's cluster goes down.
    draining = services.draining.event
    moved = services.pulsar.regions.all[reader.cluster].moved()
    stop = asyncio.Event()
    watchers = [asyncio.ensure_future(e.wait()) for e in (draining, moved)]
    for watcher in watchers:
        watcher.add_done_callback(lambda _: stop.set())
    try:
        while not stop.is_set():
            batch = await services.pulsar.next_batch(
                topic, reader, BATCH, services.settings.stream_heartbeat_s, stop, cursors=True
            )
            services.metrics.delivered.labels(topic.tenant, "stream").inc(len(batch))
            if batch:
                decoders = await services.pulsar.decoders(topic, (d.message for d in batch))
                events = (encode(d, base64_only, decoders) for d in batch)
                for chunk in _chunks(events):
                    yield chunk
            elif not stop.is_set():
                yield b"\n" if ndjson else b": heartbeat\n\n"
        # The client resumes on another replica, or in the cluster serving the topic now.
        yield _reconnect(ndjson, _SHUTTING_DOWN if draining.is_set() else _MOVED)
    except GatewayError as exc:
        if moved.is_set() and not draining.is_set():  # its cluster went down meanwhile
            yield _reconnect(ndjson, _MOVED)
            return
        body = problem_body(problem_for(exc), exc.detail)
        yield (
            orjson.dumps({"error": body}) + b"\n"
            if ndjson
            else b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"
        )
    finally:
        for watcher in watchers:
            watcher.cancel()


# A stream writes at most this much at a time: a reader that stops reading holds one chunk
# in the server's buffers, not a whole batch (100 large messages can be megabytes).
CHUNK_BYTES = 64 * 1024


def _chunks(events: Iterable[bytes]) -> Iterator[bytes]:
    """Events joined into chunks of about CHUNK_BYTES (one larger event is one chunk)."""
    pending: list[bytes] = []
    size = 0
    for event in events:
        pending.append(event)
        size += len(event)
        if size >= CHUNK_BYTES:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _sse(delivery: Delivery, base64_only: bool, decoders: Mapping[int, Contract]) -> bytes:
    message = render(
        delivery.message, delivery.position, base64_only=base64_only, decoders=decoders
    )
    data = orjson.dumps(message)
    assert delivery.cursor is not None
    return b"id: " + delivery.cursor.encode() + b"\ndata: " + data + b"\n\n"


def _ndjson(delivery: Delivery, base64_only: bool, decoders: Mapping[int, Contract]) -> bytes:
    message = render(
        delivery.message, delivery.position, base64_only=base64_only, decoders=decoders
    )
    message["cursor"] = delivery.cursor
    return orjson.dumps(message) + b"\n"
