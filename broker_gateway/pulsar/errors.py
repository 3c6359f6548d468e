"""Pulsar client results, translated into the gateway's errors."""

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar

import pulsar
import pulsar.asyncio

from broker_gateway.errors import (
    BrokerError,
    BrokerTimeout,
    BrokerUnavailable,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    SubscriptionNotFound,
    TopicNotFound,
)
from broker_gateway.pulsar.codecs import TopicName

if TYPE_CHECKING:
    from broker_gateway.pulsar.admin import PulsarAdmin

_RETRYABLE: Final = {
    "ConnectError",
    "Disconnected",
    "NotConnected",
    "ServiceUnitNotReady",
    "LookupError",
    "TooManyLookupRequestException",
    "AlreadyClosed",
    "ProducerQueueIsFull",
    "MemoryBufferIsFull",
    "BrokerMetadataError",
    "BrokerPersistenceError",
    "ProducerBlockedQuotaExceededError",
    "ProducerBlockedQuotaExceededException",
    "ProducerBusy",
    "ConsumerBusy",
}

# A token Pulsar cannot verify is not among them: the broker drops the connection and
# the client reports a Timeout.
_REFUSED: Final = {"AuthenticationError", "AuthorizationError"}

_BY_RESULT: Final[dict[str, type[GatewayError]]] = {
    "Timeout": BrokerTimeout,
    "TopicNotFound": TopicNotFound,
    "SubscriptionNotFound": SubscriptionNotFound,
    "InvalidTopicName": InvalidRequest,
    "MessageTooBig": PayloadTooLarge,
    "IncompatibleSchema": InvalidRequest,
    **dict.fromkeys(_RETRYABLE, BrokerUnavailable),
}


# Results of the C++ client that its Python enum does not name (their name reads "???").
_UNNAMED: Final = {46: "Disconnected"}  # a pending operation's connection was lost


def result_name(exc: BaseException) -> str:
    """The Pulsar result code behind an exception from either pulsar-client API."""
    if isinstance(exc, pulsar.asyncio.PulsarException):
        result = exc.error()
        return _UNNAMED.get(int(result.value), str(result.name))
    return type(exc).__name__


def translate(exc: BaseException) -> GatewayError:
    """Map an exception raised by pulsar-client to the gateway error a client sees."""
    if isinstance(exc, GatewayError):
        return exc
    name = result_name(exc)
    if name in _REFUSED:
        return BrokerError(f"Pulsar refused the gateway's credentials: {name}")
    return _BY_RESULT.get(name, BrokerError)(f"Pulsar: {name}")


# What pulsar-client raises: its asyncio API, and its plain (and C++) one.
PULSAR_ERRORS: Final = (pulsar.asyncio.PulsarException, pulsar.PulsarException)


T = TypeVar("T")


async def on_topic(
    admin: "PulsarAdmin", topic: TopicName, operation: Callable[[], Awaitable[T]]
) -> T:
    """Run a Pulsar operation on `topic`, with its errors as the gateway's.

    A missing topic is narrowed down to the tenant or namespace that is missing.
    """
    try:
        return await operation()
    except PULSAR_ERRORS as exc:
        error = translate(exc)
        if not isinstance(error, TopicNotFound):
            raise error from exc
    except TopicNotFound:
        pass
    raise await admin.explain_missing(topic)
