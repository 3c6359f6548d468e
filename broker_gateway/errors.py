"""One exception root, and one table that turns each error into an HTTP problem (RFC 9457)."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


class GatewayError(Exception):
    """Root of every error the gateway reports to a client.

    A `retryable` one is rendered with Retry-After: its own `retry_after_s` where it knows
    better (a rate limit), else GATEWAY_BROKER_RETRY_AFTER_S.
    """

    retryable: ClassVar[bool] = False

    def __init__(self, detail: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s
        # Members added to the problem body, e.g. the list of what was wrong.
        self.extra: dict[str, Any] = {}


class Unauthenticated(GatewayError):
    """No credential, or one the gateway cannot verify."""


class Forbidden(GatewayError):
    """A valid credential without the scope or tenant the request needs."""


class RateLimited(GatewayError):
    """A tenant or principal is over one of its limits; retry after `retry_after_s`."""


class InvalidRequest(GatewayError):
    """The request is malformed: bad JSON, bad name, bad position, ..."""


class IdempotencyKeyReused(InvalidRequest):
    """An Idempotency-Key came back with a different request."""


class IdempotencyKeyInUse(GatewayError):
    """An earlier request with this Idempotency-Key may still be publishing."""

    retryable = True


class SchemaViolation(InvalidRequest):
    """A published value does not conform to its topic's schema; nothing was published."""

    def __init__(self, version: int, failures: list[dict[str, Any]]) -> None:
        listed = "; ".join(f"message {f['index']}: {f['path']}: {f['error']}" for f in failures)
        super().__init__(f"not under the topic's schema (version {version}): {listed}")
        self.extra = {"schema_version": version, "errors": failures}


class SchemaNotSupported(InvalidRequest):
    """The topic's schema type cannot be published over HTTP (yet)."""


class SchemaVersionUnknown(InvalidRequest):
    """A publish pinned a schema version the topic does not have."""


class InvalidManifest(InvalidRequest):
    """A manifest set is malformed or asks for what Pulsar cannot do; nothing was changed."""

    def __init__(self, problems: Sequence[object]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.extra = {"errors": [str(p) for p in problems]}


class DestructiveChangeRefused(GatewayError):
    """An apply would delete data and was not allowed to; nothing was changed."""

    def __init__(self, changes: Sequence[object]) -> None:
        super().__init__(
            "destructive changes need allow_destructive: " + "; ".join(str(c) for c in changes)
        )
        self.extra = {"destructive": [str(c) for c in changes]}


class PayloadTooLarge(GatewayError):
    """The body is larger than the configured limit."""


class NotFound(GatewayError):
    """A resource the request names does not exist."""


class TenantNotFound(NotFound):
    pass


class NamespaceNotFound(NotFound):
    pass


class TopicNotFound(NotFound):
    pass


class SubscriptionNotFound(NotFound):
    pass


class BrokerUnavailable(GatewayError):
    """Pulsar cannot be reached or refuses work for now; the client may retry."""

    retryable = True


class BrokerTimeout(GatewayError):
    """Pulsar did not answer in time; the outcome of the operation is unknown."""

    retryable = True


class BrokerError(GatewayError):
    """Pulsar answered with an error the gateway has no better name for."""


class ShuttingDown(GatewayError):
    """This replica is shutting down: ask another one."""

    retryable = True


class Overloaded(GatewayError):
    """This replica has as many requests in hand as it may hold: retry, here or elsewhere."""

    retryable = True


class Conflict(BrokerError):
    """Pulsar's admin API answered 409: the resource exists already (or is in use)."""


class CredentialsRefused(BrokerError):
    """Pulsar's admin API answered 401 or 403: the gateway's token is missing, invalid, or
    its role may not do this. Retrying will not help; the operator has to fix the token."""


class InvalidReceipt(InvalidRequest):
    """A receipt that is not base64url, malformed, forged, edited, or another
    subscription's. Reported per receipt (`invalid_receipt`), never as the response."""


class ApplyFailed(BrokerError):
    """A step of an apply failed; the steps before it took effect, the rest did not run."""

    def __init__(self, detail: str, steps: Sequence[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.extra = {"steps": list(steps)}


@dataclass(frozen=True)
class ProblemType:
    status: int
    code: str
    title: str


# The one table. Lookup walks the exception's MRO, so a subclass without its own row
# inherits its parent's.
PROBLEMS: dict[type[GatewayError], ProblemType] = {
    GatewayError: ProblemType(500, "internal_error", "Internal error"),
    Unauthenticated: ProblemType(401, "unauthenticated", "Unauthenticated"),
    Forbidden: ProblemType(403, "forbidden", "Forbidden"),
    RateLimited: ProblemType(429, "rate_limited", "Too many requests"),
    InvalidRequest: ProblemType(422, "invalid_request", "Invalid request"),
    IdempotencyKeyReused: ProblemType(422, "idempotency_key_reused", "Idempotency-Key reused"),
    IdempotencyKeyInUse: ProblemType(409, "idempotency_key_in_use", "Idempotency-Key in use"),
    SchemaViolation: ProblemType(422, "schema_violation", "Schema violation"),
    SchemaNotSupported: ProblemType(422, "schema_not_supported", "Schema not supported"),
    SchemaVersionUnknown: ProblemType(422, "schema_version_unknown", "Schema version unknown"),
    InvalidManifest: ProblemType(422, "invalid_manifest", "Invalid manifest"),
    DestructiveChangeRefused: ProblemType(
        409, "destructive_change_refused", "Destructive change refused"
    ),
    PayloadTooLarge: ProblemType(413, "payload_too_large", "Payload too large"),
    NotFound: ProblemType(404, "not_found", "Not found"),
    TenantNotFound: ProblemType(404, "tenant_not_found", "Tenant not found"),
    NamespaceNotFound: ProblemType(404, "namespace_not_found", "Namespace not found"),
    TopicNotFound: ProblemType(404, "topic_not_found", "Topic not found"),
    SubscriptionNotFound: ProblemType(404, "subscription_not_found", "Subscription not found"),
    BrokerUnavailable: ProblemType(503, "broker_unavailable", "Broker unavailable"),
    ShuttingDown: ProblemType(503, "shutting_down", "Shutting down"),
    Overloaded: ProblemType(503, "overloaded", "Overloaded"),
    BrokerTimeout: ProblemType(504, "broker_timeout", "Broker timeout"),
    BrokerError: ProblemType(502, "broker_error", "Broker error"),
    ApplyFailed: ProblemType(502, "apply_failed", "Apply failed"),
}

# Statuses raised by the framework itself (unknown route, wrong method, ...).
HTTP_STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def problem_for(error: GatewayError) -> ProblemType:
    for cls in type(error).__mro__:
        if cls in PROBLEMS:
            return PROBLEMS[cls]
    raise AssertionError("GatewayError is in the table")  # pragma: no cover


def problem_body(problem: ProblemType, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": f"urn:broker-gateway:problem:{problem.code}",
        "title": problem.title,
        "status": problem.status,
        "detail": detail,
        "code": problem.code,
        **extra,
    }
