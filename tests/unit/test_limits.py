from types import SimpleNamespace

import pytest

from broker_gateway import limits
from broker_gateway.errors import RateLimited
from broker_gateway.limits import StreamSlots, TenantLimits, TokenBucket
from broker_gateway.settings import Settings
from tests.unit.conftest import Clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(limits, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


# --- TokenBucket ------------------------------------------------------------------------


def test_bucket_grants_the_burst_at_once_then_says_how_long_to_wait(clock: Clock) -> None:
    bucket = TokenBucket(rate=2, burst=5)
    assert [bucket.take(1) for _ in range(5)] == [0.0] * 5
    assert bucket.take(1) == pytest.approx(0.5)  # a deficit of 1 token at 2 a second
    assert bucket.take(3) == pytest.approx(1.5)


def test_refused_take_consumes_nothing(clock: Clock) -> None:
    bucket = TokenBucket(rate=1, burst=2)
    assert bucket.take(2) == 0.0
    assert bucket.take(1) == pytest.approx(1.0)
    assert bucket.take(1) == pytest.approx(1.0)
    clock.advance(1)
    assert bucket.take(1) == 0.0


def test_bucket_refills_over_time_up_to_the_burst(clock: Clock) -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert bucket.take(5) == 0.0
    clock.advance(0.2)  # 2 tokens back
    assert bucket.take(2) == 0.0
    assert bucket.take(1) == pytest.approx(0.1)
    clock.advance(3600)  # never more than the burst
    assert bucket.take(5) == 0.0
    assert bucket.take(1) > 0


def test_amount_over_the_burst_is_granted_only_from_a_full_bucket(clock: Clock) -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert bucket.take(1) == 0.0
    # Not full: wait until it is (4 tokens left, 1 missing at 10 a second).
    assert bucket.take(50) == pytest.approx(0.1)
    clock.advance(0.1)
    assert bucket.take(50) == 0.0
    # ... and it leaves the bucket empty.
    assert bucket.take(1) == pytest.approx(0.1)


# --- TenantLimits -----------------------------------------------------------------------


def test_tenant_over_its_request_burst_is_rate_limited_alone(clock: Clock) -> None:
    tenant_limits = TenantLimits(Settings(tenant_requests_per_s=2, tenant_request_burst=3))
    for _ in range(3):
        tenant_limits.request("acme")
    with pytest.raises(RateLimited) as caught:
        tenant_limits.request("acme")
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s >= 1
    assert "acme" in caught.value.detail
    for _ in range(3):
        tenant_limits.request("globex")


def test_retry_after_is_whole_seconds_rounded_up(clock: Clock) -> None:
    tenant_limits = TenantLimits(Settings(tenant_requests_per_s=0.25, tenant_request_burst=1))
    tenant_limits.request("acme")
    with pytest.raises(RateLimited) as caught:
        tenant_limits.request("acme")
    assert caught.value.retry_after_s == 4
    clock.advance(4)
    tenant_limits.request("acme")


def test_rate_limited_tenant_recovers_after_retry_after(clock: Clock) -> None:
    tenant_limits = TenantLimits(Settings(tenant_requests_per_s=1, tenant_request_burst=1))
    tenant_limits.request("acme")
    with pytest.raises(RateLimited) as caught:
        tenant_limits.request("acme")
    assert caught.value.retry_after_s is not None
    clock.advance(caught.value.retry_after_s)
    tenant_limits.request("acme")


def test_zero_rates_mean_unlimited(clock: Clock) -> None:
    tenant_limits = TenantLimits(
        Settings(
            tenant_requests_per_s=0,
            tenant_request_burst=1,
            tenant_bytes_per_s=0,
            tenant_byte_burst=1,
        )
    )
    for _ in range(10_000):
        tenant_limits.request("acme")
    tenant_limits.published("acme", 10**12)
    tenant_limits.published("acme", 10**12)


def test_tenant_over_its_byte_burst_is_rate_limited_alone(clock: Clock) -> None:
    tenant_limits = TenantLimits(Settings(tenant_bytes_per_s=1000, tenant_byte_burst=4000))
    tenant_limits.published("acme", 3000)
    tenant_limits.published("acme", 1000)
    with pytest.raises(RateLimited) as caught:
        tenant_limits.published("acme", 2500)
    assert caught.value.retry_after_s == 3  # 2500 bytes missing at 1000 a second
    assert "bytes" in caught.value.detail
    tenant_limits.published("globex", 4000)
    clock.advance(3)
    tenant_limits.published("acme", 2500)


def test_request_and_byte_limits_are_separate_buckets(clock: Clock) -> None:
    tenant_limits = TenantLimits(
        Settings(
            tenant_requests_per_s=1,
            tenant_request_burst=1,
            tenant_bytes_per_s=100,
            tenant_byte_burst=100,
        )
    )
    tenant_limits.published("acme", 100)
    tenant_limits.request("acme")
    with pytest.raises(RateLimited):
        tenant_limits.published("acme", 1)


# --- StreamSlots ------------------------------------------------------------------------


def test_principal_may_hold_up_to_the_limit_of_streams() -> None:
    slots = StreamSlots(limit=2, retry_after_s=7)
    with slots.hold("alice"), slots.hold("alice"):
        with pytest.raises(RateLimited) as caught, slots.hold("alice"):
            pass
        assert caught.value.retry_after_s == 7
        assert "alice" in caught.value.detail


def test_closing_a_stream_frees_its_slot() -> None:
    slots = StreamSlots(limit=1, retry_after_s=1)
    with slots.hold("alice"):
        pass
    with slots.hold("alice"):
        pass


def test_stream_that_fails_frees_its_slot() -> None:
    slots = StreamSlots(limit=1, retry_after_s=1)
    with pytest.raises(RuntimeError), slots.hold("alice"):
        raise RuntimeError("client went away")
    with slots.hold("alice"):
        pass


def test_refused_hold_takes_no_slot() -> None:
    slots = StreamSlots(limit=1, retry_after_s=1)
    with slots.hold("alice"):
        for _ in range(3):
            with pytest.raises(RateLimited), slots.hold("alice"):
                pass
    with slots.hold("alice"), pytest.raises(RateLimited), slots.hold("alice"):
        pass
    with slots.hold("alice"):
        pass


def test_principals_hold_slots_independently() -> None:
    slots = StreamSlots(limit=1, retry_after_s=1)
    with slots.hold("alice"), slots.hold("bob"):
        with pytest.raises(RateLimited), slots.hold("alice"):
            pass
        with pytest.raises(RateLimited), slots.hold("bob"):
            pass
