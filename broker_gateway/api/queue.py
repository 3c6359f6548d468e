"""Work-queue subscriptions: configure, pull, ack, nack, extend, seek, redrive."""

import re
import time
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from broker_gateway import tracing
from broker_gateway.api.bodies import json_validated
from broker_gateway.api.deps import AppServices, ConsumeTopic, Services, authorize
from broker_gateway.api.read import Message
from broker_gateway.api.responses import JSON, TOPIC_PROBLEMS, FastRoute
from broker_gateway.errors import InvalidRequest
from broker_gateway.pulsar.codecs import TopicName, parse_start
from broker_gateway.pulsar.messages import render
from broker_gateway.pulsar.queues import ReceiptCode, Settled, SubscriptionConfig

router = APIRouter(responses=TOPIC_PROBLEMS, tags=["work queues"])

BASE = "/v1/topics/{tenant}/{namespace}/{topic}/subscriptions/{subscription}"
SUBSCRIPTION_PATTERN = r"^[A-Za-z0-9_.=:-]{1,255}$"
Subscription = Annotated[str, Path(pattern=SUBSCRIPTION_PATTERN, description="Subscription name")]
Receipts = Annotated[list[str], Field(min_length=1, max_length=10_000)]


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_messages: int = Field(default=10, ge=1)
    wait_ms: int = Field(default=0, ge=0, description="Long poll; capped by GATEWAY_MAX_WAIT_MS")
    ack_deadline_ms: int | None = Field(
        default=None, ge=100, le=12 * 3600 * 1000, description="Default: the subscription's"
    )


class PulledMessage(Message):
    receipt: str
    delivery_attempt: int


class PullResponse(BaseModel):
    messages: list[PulledMessage]


class AckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    receipts: Receipts


class NackRequest(AckRequest):
    delay_ms: int | None = Field(
        default=None, ge=0, description="Default: the subscription's retry backoff"
    )


class ExtendRequest(AckRequest):
    ack_deadline_ms: int = Field(ge=100, le=12 * 3600 * 1000, description="From now")


class FailedReceipt(BaseModel):
    receipt: str
    code: ReceiptCode = Field(
        description="`invalid_receipt` (forged, edited, another subscription's), "
        "`lease_expired` (its deadline passed or it was nacked: it is redelivered), or "
        "`broker_unavailable` / `broker_timeout` / `broker_error` (retry)"
    )


class SettleResponse(BaseModel):
    succeeded: int
    failed: list[FailedReceipt]


class SeekRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    position: str = Field(description="`earliest`, `latest`, `time:...` or a read cursor")


class RedriveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_messages: int = Field(default=1000, ge=1, le=100_000)


def _settled(
    settled: Settled,
    operation: str,
    topic: TopicName,
    services: Services,
    headers: Mapping[str, str],
    started_ns: int,
) -> JSON:
    """The answer to a settle, counted, timed and traced."""
    tracing.settled(topic, operation, len(settled.failed) + settled.succeeded, headers, started_ns)
    metrics = services.metrics
    metrics.pulsar_latency.labels(operation).observe((time.time_ns() - started_ns) / 1e9)
    metrics.queue_settles.labels(topic.tenant, operation, "succeeded").inc(settled.succeeded)
    metrics.queue_settles.labels(topic.tenant, operation, "failed").inc(len(settled.failed))
    failed = [{"receipt": receipt, "code": code.value} for receipt, code in settled.failed]
    return JSON({"succeeded": settled.succeeded, "failed": failed})


@router.put(
    BASE,
    summary="Create or update a subscription",
    status_code=200,
    responses={201: {"description": "Created"}},
)
async def configure(
    body: SubscriptionConfig, topic: ConsumeTopic, subscription: Subscription, services: AppServices
) -> JSON:
    """Idempotent: 201 with the configuration when created, 200 when it existed. Every
    replica works with the new configuration at once; one that cannot be told takes it up
    within GATEWAY_QUEUE_CONFIG_REFRESH_S, as after a manifest apply."""
    body.check_for(topic)
    created = await services.pulsar.queues.configure(topic, subscription, body)
    return JSON(body.model_dump(mode="json"), status_code=201 if created else 200)


@router.get(BASE, summary="Subscription configuration and stats")
async def describe(topic: ConsumeTopic, subscription: Subscription, services: AppServices) -> JSON:
    """Configuration with Pulsar's stats: `backlog` (entries not yet acked: a batch of
    messages counts once), `unacked` (dispatched to the gateway, not acked),
    `oldest_unacked_age_ms`, `dead_letter_backlog` and `consumers` (gateway consumers
    attached)."""
    described = await services.pulsar.queues.describe(topic, subscription)
    config = described.pop("config").model_dump(mode="json")
    return JSON({**config, **described})


@router.delete(BASE, summary="Delete a subscription", status_code=204)
async def delete(
    topic: ConsumeTopic, subscription: Subscription, services: AppServices
) -> Response:
    """Removes the subscription and its position; its dead-letter topic stays."""
    await services.pulsar.queues.delete(topic, subscription)
    return Response(status_code=204)


@router.post(f"{BASE}/pull", summary="Pull messages", responses={200: {"model": PullResponse}})
async def pull(
    request: Request,
    body: PullRequest,
    topic: ConsumeTopic,
    subscription: Subscription,
    services: AppServices,
) -> JSON:
    """Lease up to `max_messages` until their ack deadline; an empty list after `wait_ms`.

    Unacked past the deadline, a message is delivered again (to any worker, through any
    replica) with `delivery_attempt` + 1. Nothing is acknowledged to Pulsar until an ack.
    """
    return await _pull(body, topic, subscription, services, request.headers)


async def _pull(
    body: PullRequest,
    topic: TopicName,
    subscription: str,
    services: Services,
    headers: Mapping[str, str],
) -> JSON:
    started_ns = time.time_ns()
    if body.max_messages > services.settings.max_pull_messages:
        raise InvalidRequest(f"max_messages is at most {services.settings.max_pull_messages}")
    pulled = await services.pulsar.queues.pull(
        topic,
        subscription,
        max_messages=body.max_messages,
        wait_s=min(body.wait_ms, services.settings.max_wait_ms) / 1000,
        ack_deadline_ms=body.ack_deadline_ms,
        stop=services.draining.event,  # a replica shutting down answers with what it has
    )
    metrics = services.metrics
    metrics.queue_pulls.labels(topic.tenant).inc()
    metrics.delivered.labels(topic.tenant, "pull").inc(len(pulled))
    metrics.queue_redeliveries.labels(topic.tenant).inc(
        sum(item.delivery_attempt > 1 for item in pulled)
    )
    tracing.received(topic, (item.message.properties() for item in pulled), headers, started_ns)
    messages: list[dict[str, Any]] = []
    decoders = await services.pulsar.decoders(topic, (item.message for item in pulled))
    for item in pulled:
        message = render(item.message, decoders=decoders)
        message["receipt"] = item.receipt
        message["delivery_attempt"] = item.delivery_attempt
        messages.append(message)
    return JSON({"messages": messages})


@router.post(f"{BASE}/ack", summary="Acknowledge", responses={200: {"model": SettleResponse}})
async def ack(
    request: Request,
    body: AckRequest,
    topic: ConsumeTopic,
    subscription: Subscription,
    services: AppServices,
) -> JSON:
    """Done with these messages; works on any replica. Acking twice is harmless."""
    return await _ack(body, topic, subscription, services, request.headers)


async def _ack(
    body: AckRequest,
    topic: TopicName,
    subscription: str,
    services: Services,
    headers: Mapping[str, str],
) -> JSON:
    started = time.time_ns()
    settled = await services.pulsar.queues.ack(topic, subscription, body.receipts)
    return _settled(settled, "ack", topic, services, headers, started)


@router.post(
    f"{BASE}/nack", summary="Negative acknowledge", responses={200: {"model": SettleResponse}}
)
async def nack(
    request: Request,
    body: NackRequest,
    topic: ConsumeTopic,
    subscription: Subscription,
    services: AppServices,
) -> JSON:
    """Deliver these again after `delay_ms`; works on any replica."""
    started = time.time_ns()
    settled = await services.pulsar.queues.nack(topic, subscription, body.receipts, body.delay_ms)
    return _settled(settled, "nack", topic, services, request.headers, started)


@router.post(
    f"{BASE}/extend", summary="Extend the ack deadline", responses={200: {"model": SettleResponse}}
)
async def extend(
    request: Request,
    body: ExtendRequest,
    topic: ConsumeTopic,
    subscription: Subscription,
    services: AppServices,
) -> JSON:
    """Keep these leased for `ack_deadline_ms` more from now; works on any replica."""
    started = time.time_ns()
    settled = await services.pulsar.queues.extend(
        topic, subscription, body.receipts, body.ack_deadline_ms
    )
    return _settled(settled, "extend", topic, services, request.headers, started)


@router.post(f"{BASE}/seek", summary="Seek the subscription", status_code=204)
async def seek(
    body: SeekRequest, topic: ConsumeTopic, subscription: Subscription, services: AppServices
) -> Response:
    """Replay from a position (or skip to `latest`). Outstanding leases are void: their
    messages are delivered again if the new position is before them."""
    start = parse_start(body.position, topic)
    await services.pulsar.queues.seek(topic, subscription, start)
    return Response(status_code=204)


@router.post(f"{BASE}/dead-letters/redrive", summary="Redrive dead letters")
async def redrive(
    body: RedriveRequest, topic: ConsumeTopic, subscription: Subscription, services: AppServices
) -> JSON:
    """Move up to `max_messages` dead letters back to the topic for this subscription.

    Other subscriptions of the topic skip redriven messages; readers of the topic see them.
    """
    moved = await services.pulsar.queues.redrive(topic, subscription, body.max_messages)
    services.metrics.queue_redriven.labels(topic.tenant).inc(moved)
    return JSON({"moved": moved})


# Pull and ack as plain Starlette routes, ahead of their FastAPI twins (which document
# them), as publish is (see publish_route): same checks, in the same order, same errors.


async def pull_route(request: Request) -> JSON:
    services, topic, subscription = _queue_call(request)
    body = json_validated(PullRequest, request.headers, await request.body())
    return await _pull(body, topic, subscription, services, request.headers)


async def ack_route(request: Request) -> JSON:
    services, topic, subscription = _queue_call(request)
    body = json_validated(AckRequest, request.headers, await request.body())
    return await _ack(body, topic, subscription, services, request.headers)


def _queue_call(request: Request) -> tuple[Services, TopicName, str]:
    """The caller is authorized on the topic (401, 422, 403, 429), then the subscription's
    name is checked (422)."""
    services: Services = request.app.state.services
    params = request.path_params
    topic = authorize(
        services, request, "consume", params["tenant"], params["namespace"], params["topic"]
    )
    subscription: str = params["subscription"]
    if not _SUBSCRIPTION_NAME.fullmatch(subscription):
        raise RequestValidationError(
            [
                {
                    "type": "string_pattern_mismatch",
                    "loc": ("path", "subscription"),
                    "msg": f"String should match pattern '{SUBSCRIPTION_PATTERN}'",
                }
            ]
        )
    return services, topic, subscription


_SUBSCRIPTION_NAME = re.compile(SUBSCRIPTION_PATTERN.removeprefix("^").removesuffix("$"))

fast_routes = [
    FastRoute(f"{BASE}/pull", pull_route, methods=["POST"]),
    FastRoute(f"{BASE}/ack", ack_route, methods=["POST"]),
]
