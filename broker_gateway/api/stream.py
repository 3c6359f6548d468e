"""GET /v1/topics/{tenant}/{namespace}/{topic}/stream: follow a topic live."""

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import AsyncExitStack
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from broker_gateway.api.deps import AppServices, ConsumeTopic, CurrentPrincipal
from broker_gateway.api.read import Encoding, Position
from broker_gateway.api.responses import TOPIC_PROBLEMS
from broker_gateway.errors import GatewayError, problem_body, problem_for
from broker_gateway.pulsar.codecs import parse_start
from broker_gateway.pulsar.contracts import Contract
from broker_gateway.pulsar.messages import render
from broker_gateway.pulsar.reading import Delivery

router = APIRouter(responses=TOPIC_PROBLEMS, tags=["streaming"])

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
BATCH = 100
_SHUTTING_DOWN = {"reason": "this replica is shutting down: reconnect to resume"}
_RECONNECT_SSE = b"event: reconnect\ndata: " + orjson.dumps(_SHUTTING_DOWN) + b"\n\n"
_RECONNECT_NDJSON = orjson.dumps({"reconnect": _SHUTTING_DOWN}) + b"\n"


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
    topic: ConsumeTopic,
    services: AppServices,
    principal: CurrentPrincipal,
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
    line): reconnect, with Last-Event-ID, and another replica resumes it.
    """
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
    encode = _ndjson if ndjson else _sse
    base64_only = encoding == "base64"

    async def events() -> AsyncIterator[bytes]:
        yield b"\n" if ndjson else b": connected\n\n"
        stop = services.draining.event
        try:
            while not stop.is_set():
                batch = await services.pulsar.next_batch(
                    topic, reader, BATCH, services.settings.stream_heartbeat_s, stop, cursors=True
                )
                services.metrics.read.inc(len(batch))
                if batch:
                    decoders = await services.pulsar.decoders(topic, (d.message for d in batch))
                    events = (encode(d, base64_only, decoders) for d in batch)
                    for chunk in _chunks(events):
                        yield chunk
                elif not stop.is_set():
                    yield b"\n" if ndjson else b": heartbeat\n\n"
            # This replica is shutting down: the client resumes on another one.
            yield _RECONNECT_NDJSON if ndjson else _RECONNECT_SSE
        except GatewayError as exc:
            body = problem_body(problem_for(exc), exc.detail)
            yield (
                orjson.dumps({"error": body}) + b"\n"
                if ndjson
                else b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"
            )

    return _Stream(events(), stack.aclose, NDJSON if ndjson else SSE)


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
