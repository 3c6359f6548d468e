"""A work-queue subscription's configuration: one shape, for clients (HTTP and manifests),
for plans, and for Pulsar, where it lives as subscription properties. Every replica reads
it from there, so none keeps it.

`configure` is the one way a subscription is created or changed, whoever asks.
"""

from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from broker_gateway.errors import Conflict, InvalidRequest, NotFound
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.pulsar.codecs import TopicName

SubscriptionType = Literal["shared", "key_shared"]
InitialPosition = Literal["earliest", "latest"]

# The gateway's own subscription properties; others on a subscription are left alone.
_PREFIX: Final = "broker-gateway."


class SubscriptionConfig(BaseModel):
    """A subscription's configuration, as clients and manifests write it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: SubscriptionType = Field(
        default="shared",
        description="`key_shared`: per-key order, never two messages of one key out at once.",
    )
    initial_position: InitialPosition = Field(
        default="latest", description="Where a new subscription starts. Ignored on update."
    )
    ack_deadline_ms: int = Field(default=30_000, ge=100, le=12 * 3600 * 1000)
    max_deliveries: int | None = Field(
        default=None, ge=1, description="After this many deliveries, to the dead-letter topic."
    )
    dead_letter_topic: str | None = Field(
        default=None,
        description="{tenant}/{namespace}/{topic} in the same tenant; "
        "default {topic}-{subscription}-DLQ",
    )
    retry_backoff_ms: tuple[int, int] = Field(
        default=(1_000, 60_000),
        description="[min, max] delay before a nacked message (without `delay_ms`) returns; "
        "doubles with each delivery.",
    )

    @field_validator("retry_backoff_ms")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= value[0] <= value[1]:
            raise ValueError("retry_backoff_ms is [min, max] with 0 <= min <= max")
        return value

    @field_validator("dead_letter_topic")
    @classmethod
    def _topic_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = value.split("/")
        if len(parts) != 3:
            raise ValueError("dead_letter_topic is {tenant}/{namespace}/{topic}")
        try:
            TopicName.parse(*parts)
        except InvalidRequest as exc:
            raise ValueError(exc.detail) from exc
        return value

    def check_for(self, topic: TopicName) -> None:
        """Raises: InvalidRequest when the dead-letter topic is in another tenant."""
        if self.dead_letter_topic is not None:
            if self.dead_letter_topic.split("/")[0] != topic.tenant:
                raise InvalidRequest("dead_letter_topic must be in the topic's tenant")

    def dead_letters(self, topic: TopicName, subscription: str) -> TopicName:
        if self.dead_letter_topic is not None:
            return TopicName.parse(*self.dead_letter_topic.split("/"))
        return TopicName(topic.tenant, topic.namespace, f"{topic.topic}-{subscription}-DLQ")

    def backoff_ms(self, delivery_attempt: int) -> int:
        """Exponential redelivery delay after the given attempt, within retry_backoff_ms."""
        low, high = self.retry_backoff_ms
        return int(min(high, low * 2 ** max(delivery_attempt - 1, 0)))

    def fields(self) -> dict[str, Any]:
        """What a plan compares, and what a live subscription shows: everything but
        `initial_position`, which only matters when it is created."""
        return self.model_dump(exclude={"initial_position"})

    def to_properties(self) -> dict[str, str]:
        values = {
            "type": self.type,
            "initial_position": self.initial_position,
            "ack_deadline_ms": str(self.ack_deadline_ms),
            "retry_backoff_ms": f"{self.retry_backoff_ms[0]},{self.retry_backoff_ms[1]}",
            "max_deliveries": None if self.max_deliveries is None else str(self.max_deliveries),
            "dead_letter_topic": self.dead_letter_topic,
        }
        return {_PREFIX + k: v for k, v in values.items() if v is not None}

    @classmethod
    def from_properties(cls, properties: dict[str, str]) -> "SubscriptionConfig":
        """Raises: ValueError when a property is malformed."""
        own: dict[str, Any] = {
            k.removeprefix(_PREFIX): v for k, v in properties.items() if k.startswith(_PREFIX)
        }
        if "retry_backoff_ms" in own:
            own["retry_backoff_ms"] = own["retry_backoff_ms"].split(",")
        try:
            return cls.model_validate(own)
        except ValidationError as exc:
            problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
            raise ValueError(problems) from None


async def configure(
    admin: PulsarAdmin,
    topic: TopicName,
    subscription: str,
    config: SubscriptionConfig,
    *,
    make_topic: Callable[[], Awaitable[None]] | None = None,
) -> bool:
    """Create the subscription, or update its configuration; True when it was created.

    The gateway's properties are replaced, anyone else's kept. With `max_deliveries`, the
    dead-letter topic gets a subscription of the same name: its backlog is the dead-letter
    count, and redrive consumes from it. `make_topic` creates a missing topic (HTTP creates
    topics on first use, as publishing does); without it, a missing topic is NotFound.
    Replicas take the change up within GATEWAY_QUEUE_CONFIG_REFRESH_S.

    Raises: NotFound; GatewayError.
    """
    created = False
    try:
        existing = await admin.subscription_properties(topic, subscription)
    except NotFound:
        existing = {}
        created = await _create(admin, topic, subscription, config, make_topic)
    if not created:
        kept = {k: v for k, v in existing.items() if not k.startswith(_PREFIX)}
        await admin.set_subscription_properties(
            topic, subscription, {**kept, **config.to_properties()}
        )
    if config.max_deliveries is not None:
        dead_letters = config.dead_letters(topic, subscription)
        await admin.ensure_topic(dead_letters, retention_minutes=-1)
        try:
            await admin.create_subscription(
                dead_letters, subscription, earliest=True, properties={}
            )
        except Conflict:
            pass
    return created


async def _create(
    admin: PulsarAdmin,
    topic: TopicName,
    subscription: str,
    config: SubscriptionConfig,
    make_topic: Callable[[], Awaitable[None]] | None,
) -> bool:
    """Raises: NotFound (no topic, and no `make_topic`); GatewayError."""
    earliest = config.initial_position == "earliest"
    properties = config.to_properties()
    try:
        await admin.create_subscription(
            topic, subscription, earliest=earliest, properties=properties
        )
    except Conflict:
        return False  # created meanwhile by another request: update it
    except NotFound:
        if make_topic is None:
            raise
        await make_topic()
        await admin.create_subscription(
            topic, subscription, earliest=earliest, properties=properties
        )
    return True
