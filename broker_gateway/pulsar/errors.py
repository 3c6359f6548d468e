"""Pulsar client results, translated into the gateway's errors."""

from typing import Final

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

_RETRYABLE: Final = {
    "ConnectError",
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


def result_name(exc: BaseException) -> str:
    """The Pulsar result code behind an exception from either pulsar-client API."""
    if isinstance(exc, pulsar.asyncio.PulsarException):
        return str(exc.error().name)
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


def is_pulsar_error(exc: BaseException) -> bool:
    return isinstance(exc, PULSAR_ERRORS)
