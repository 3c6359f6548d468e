"""Limits that keep clients from exhausting the gateway: body size, requests in hand, rates,
streams."""

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker_gateway.errors import GatewayError, Overloaded, PayloadTooLarge, RateLimited
from broker_gateway.settings import Settings


class BodySizeLimit:
    """413 for a body over `max_bytes`: at once from Content-Length, else while it streams.

    A Content-Length over the limit is answered here, with `respond`: an error raised out of
    a middleware reaches the server, which logs bad input as a crash. A body that grows past
    the limit raises PayloadTooLarge from `receive`, inside the route that reads it, where
    the app's error handlers answer it.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, respond: Callable[[GatewayError], Response]
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self.respond(self._too_large())(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the body is larger than {self.max_bytes} bytes")


class InFlightLimit:
    """503 `overloaded` (Retry-After 1) for a request beyond `limit` in hand at once.

    Load beyond what the replica serves is refused at once instead of queueing without
    bound in memory. Health checks and metrics are never refused; live streams are bounded
    per principal instead (StreamSlots), since each holds its slot for as long as it runs.
    Long polls count while they wait.
    """

    EXEMPT = frozenset({"/livez", "/readyz", "/metrics"})

    def __init__(
        self, app: ASGIApp, limit: int, respond: Callable[[GatewayError], Response]
    ) -> None:
        self.app = app
        self.limit = limit
        self.respond = respond
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.EXEMPT or path.endswith("/stream"):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            error = Overloaded(
                f"this replica is serving its limit of {self.limit} requests", retry_after_s=1
            )
            await self.respond(error)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class TokenBucket:
    """`rate` tokens a second, up to `burst` saved up. Not thread-safe: one event loop."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()

    def take(self, amount: float) -> float:
        """Take `amount`; 0 when granted, else the seconds until it would be."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if amount <= self._tokens:
            self._tokens -= amount
            return 0.0
        # More than a burst can never be granted at once; let it through when full.
        if amount > self.burst and self._tokens >= self.burst:
            self._tokens = 0
            return 0.0
        return (min(amount, self.burst) - self._tokens) / self.rate


class TenantLimits:
    """Per-tenant request and byte rates, kept in this replica's memory.

    Each replica enforces the configured rates on its own share of the traffic.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._requests: dict[str, TokenBucket] = {}
        self._bytes: dict[str, TokenBucket] = {}

    def request(self, tenant: str) -> None:
        """Raises: RateLimited over the tenant's request rate."""
        rate, burst = self._settings.tenant_requests_per_s, self._settings.tenant_request_burst
        self._take(self._requests, tenant, 1, rate, burst, "requests")

    def published(self, tenant: str, size: int) -> None:
        """Raises: RateLimited over the tenant's byte rate (nothing is published then)."""
        rate, burst = self._settings.tenant_bytes_per_s, self._settings.tenant_byte_burst
        self._take(self._bytes, tenant, size, rate, burst, "bytes")

    @staticmethod
    def _take(
        buckets: dict[str, TokenBucket],
        tenant: str,
        amount: int,
        rate: float,
        burst: int,
        unit: str,
    ) -> None:
        if not rate:
            return
        bucket = buckets.get(tenant)
        if bucket is None:
            bucket = buckets[tenant] = TokenBucket(rate, burst)
        wait_s = bucket.take(amount)
        if wait_s > 0:
            raise RateLimited(
                f"tenant {tenant} is over {rate:g} {unit} a second",
                retry_after_s=max(1, math.ceil(wait_s)),
            )


class StreamSlots:
    """How many live streams each principal holds open on this replica."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self._limit = limit
        self._retry_after_s = retry_after_s
        self._open: Counter[str] = Counter()

    def open(self) -> int:
        """Live streams open on this replica now."""
        return sum(self._open.values())

    @contextmanager
    def hold(self, principal: str) -> Iterator[None]:
        """Raises: RateLimited when the principal already holds `limit` streams."""
        if self._open[principal] >= self._limit:
            raise RateLimited(
                f"{principal} already has {self._limit} streams open",
                retry_after_s=self._retry_after_s,
            )
        self._open[principal] += 1
        try:
            yield
        finally:
            self._open[principal] -= 1
            if not self._open[principal]:
                del self._open[principal]
