"""A work-queue subscription's configuration, kept in Pulsar as subscription properties.

Every replica reads it from there, so none keeps it. Pure: no broker needed.
"""

from dataclasses import dataclass, replace
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from broker_gateway.errors import InvalidRequest
from broker_gateway.pulsar.codecs import TopicName

SubscriptionType = Literal["shared", "key_shared"]
InitialPosition = Literal["earliest", "latest"]

_PREFIX: Final = "broker-gateway."


@dataclass(frozen=True, slots=True)
class SubscriptionConfig:
    type: SubscriptionType = "shared"
    initial_position: InitialPosition = "latest"
    ack_deadline_ms: int = 30_000
    max_deliveries: int | None = None
    dead_letter_topic: str | None = None  # {tenant}/{namespace}/{topic}
    retry_backoff_ms: tuple[int, int] = (1_000, 60_000)

    def dead_letters(self, topic: TopicName, subscription: str) -> TopicName:
        if self.dead_letter_topic is not None:
            return TopicName.parse(*self.dead_letter_topic.split("/"))
        return TopicName(topic.tenant, topic.namespace, f"{topic.topic}-{subscription}-DLQ")

    def backoff_ms(self, delivery_attempt: int) -> int:
        """Exponential redelivery delay after the given attempt, within retry_backoff_ms."""
        low, high = self.retry_backoff_ms
        return int(min(high, low * 2 ** max(delivery_attempt - 1, 0)))

    def to_properties(self) -> dict[str, str]:
        properties = {
            "type": self.type,
            "initial_position": self.initial_position,
            "ack_deadline_ms": str(self.ack_deadline_ms),
            "retry_backoff_ms": f"{self.retry_backoff_ms[0]},{self.retry_backoff_ms[1]}",
        }
        if self.max_deliveries is not None:
            properties["max_deliveries"] = str(self.max_deliveries)
        if self.dead_letter_topic is not None:
            properties["dead_letter_topic"] = self.dead_letter_topic
        return {_PREFIX + k: v for k, v in properties.items()}

    @classmethod
    def from_properties(cls, properties: dict[str, str]) -> "SubscriptionConfig":
        """Raises: ValueError when a property is malformed."""
        own = {k.removeprefix(_PREFIX): v for k, v in properties.items() if k.startswith(_PREFIX)}
        config = cls()
        if "type" in own:
            if own["type"] not in ("shared", "key_shared"):
                raise ValueError(f"unknown subscription type {own['type']!r}")
            config = replace(config, type=own["type"])  # type: ignore[arg-type]
        if own.get("initial_position") in ("earliest", "latest"):
            config = replace(config, initial_position=own["initial_position"])  # type: ignore[arg-type]
        if "ack_deadline_ms" in own:
            config = replace(config, ack_deadline_ms=int(own["ack_deadline_ms"]))
        if "max_deliveries" in own:
            config = replace(config, max_deliveries=int(own["max_deliveries"]))
        if "dead_letter_topic" in own:
            config = replace(config, dead_letter_topic=own["dead_letter_topic"])
        if "retry_backoff_ms" in own:
            low, high = (int(x) for x in own["retry_backoff_ms"].split(","))
            config = replace(config, retry_backoff_ms=(low, high))
        return config


class SubscriptionSpec(BaseModel):
    """A subscription's configuration as clients (and manifests) write it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["shared", "key_shared"] = Field(
        default="shared",
        description="`key_shared`: per-key order, never two messages of one key out at once.",
    )
    initial_position: Literal["earliest", "latest"] = Field(
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

    def config(self, topic: TopicName) -> SubscriptionConfig:
        if self.dead_letter_topic is not None:
            if self.dead_letter_topic.split("/")[0] != topic.tenant:
                raise InvalidRequest("dead_letter_topic must be in the topic's tenant")
        return SubscriptionConfig(**self.model_dump())
