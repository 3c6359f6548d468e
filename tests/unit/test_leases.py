"""The lease table through every transition, on a clock the test moves: no broker, no loop."""

from broker_gateway.pulsar.queues.leases import Admission, LeaseTable
from tests.unit.conftest import Clock


def table(*, key_shared: bool = False) -> tuple[LeaseTable[str], Clock]:
    clock = Clock()
    leases: LeaseTable[str] = LeaseTable(key_shared=key_shared, clock=clock.monotonic)
    return leases, clock


def test_pulled_becomes_leased_until_its_deadline() -> None:
    leases, clock = table()
    assert leases.admit(b"m1", "message 1", "c1", None, 5000) is Admission.LEASED
    assert len(leases) == 1 and leases.leases_of("c1") == 1
    assert leases.next_deadline() == 1005.0
    clock.advance(4.5)
    assert leases.due() == []
    clock.advance(0.5)
    [expired] = leases.due()
    assert (expired.message_id, expired.message, expired.holder) == (b"m1", "message 1", "c1")
    assert len(leases) == 0 and leases.leases_of("c1") == 0


def test_leased_then_acked_never_expires() -> None:
    leases, clock = table()
    leases.admit(b"m1", "message", "c1", None, 1000)
    acked = leases.ack(b"m1")
    assert acked is not None and acked.message == "message"
    assert leases.ack(b"m1") is None  # twice: nothing more to end
    clock.advance(10)
    assert leases.due() == []  # its timer is stale, and skipped


def test_extend_moves_the_deadline_from_now() -> None:
    leases, clock = table()
    leases.admit(b"m1", "message", "c1", None, 1000)
    clock.advance(0.75)
    assert leases.extend(b"m1", 1000)
    clock.advance(0.75)  # past the first deadline, before the new one
    assert leases.due() == []
    clock.advance(0.25)
    assert [lease.message_id for lease in leases.due()] == [b"m1"]
    assert not leases.extend(b"m1", 1000)  # expired: not leased any more


def test_nack_ends_the_lease_after_its_delay_and_only_once() -> None:
    leases, clock = table()
    leases.admit(b"m1", "message", "c1", None, 60_000)
    assert leases.nack(b"m1", 250)
    assert not leases.nack(b"m1", 0)  # nacked already
    assert not leases.extend(b"m1", 60_000)  # a nacked lease cannot be kept
    clock.advance(0.125)
    assert leases.due() == []
    clock.advance(0.125)
    [due] = leases.due()
    assert due.nacked and due.message_id == b"m1"
    assert not leases.nack(b"m1", 0)  # gone


def test_an_ack_after_a_nack_but_before_its_delay_wins() -> None:
    leases, clock = table()
    leases.admit(b"m1", "message", "c1", None, 60_000)
    leases.nack(b"m1", 1000)
    assert leases.ack(b"m1") is not None
    clock.advance(2)
    assert leases.due() == []


def test_a_redelivery_of_a_leased_message_is_a_duplicate() -> None:
    leases, _ = table()
    leases.admit(b"m1", "first delivery", "c1", None, 1000)
    assert leases.admit(b"m1", "again", "c2", None, 1000) is Admission.DUPLICATE
    assert leases.leases_of("c2") == 0
    lease = leases.get(b"m1")
    assert lease is not None and lease.message == "first delivery"


def test_key_shared_holds_a_busy_keys_messages_in_order_until_the_key_is_free() -> None:
    leases, clock = table(key_shared=True)
    assert leases.admit(b"a1", "a1", "c1", "a", 1000) is Admission.LEASED
    assert leases.admit(b"a2", "a2", "c1", "a", 1000) is Admission.HELD
    assert leases.admit(b"b1", "b1", "c1", "b", 1000) is Admission.LEASED
    assert leases.admit(b"a3", "a3", "c2", "a", 1000) is Admission.HELD
    assert leases.admit(b"n1", "no key", "c1", None, 1000) is Admission.LEASED
    assert leases.lease_held(1000) is None  # key a is still leased
    leases.ack(b"a1")
    held = leases.lease_held(1000)  # the oldest of the key first
    assert held is not None and (held.message_id, held.holder) == (b"a2", "c1")
    assert leases.lease_held(1000) is None
    clock.advance(1)  # a2 expires: the key is free again
    assert {lease.message_id for lease in leases.due()} == {b"a2", b"b1", b"n1"}
    held = leases.lease_held(1000)
    assert held is not None and (held.message_id, held.holder) == (b"a3", "c2")


def test_a_message_of_a_key_that_just_became_free_waits_behind_that_keys_held_ones() -> None:
    """The lease of a1 ends while a pull waits on Pulsar; the message that pull then brings
    (a9) must not overtake a2, which was held first."""
    leases, _ = table(key_shared=True)
    leases.admit(b"a1", "a1", "c1", "a", 1000)
    leases.admit(b"a2", "a2", "c1", "a", 1000)
    leases.ack(b"a1")
    assert leases.admit(b"a9", "a9", "c1", "a", 1000) is Admission.HELD
    held = leases.lease_held(1000)
    assert held is not None and held.message == "a2"
    leases.ack(b"a2")
    held = leases.lease_held(1000)
    assert held is not None and held.message == "a9"


def test_keys_do_not_matter_on_a_shared_subscription() -> None:
    leases, _ = table(key_shared=False)
    assert leases.admit(b"a1", "a1", "c1", "a", 1000) is Admission.LEASED
    assert leases.admit(b"a2", "a2", "c1", "a", 1000) is Admission.LEASED


def test_a_closing_holder_drops_what_it_held() -> None:
    leases, _ = table(key_shared=True)
    leases.admit(b"a1", "a1", "c1", "a", 1000)
    leases.admit(b"a2", "a2", "old", "a", 1000)
    leases.admit(b"a3", "a3", "new", "a", 1000)
    assert leases.drop_held("old") == 1
    leases.ack(b"a1")
    held = leases.lease_held(1000)
    assert held is not None and held.message == "a3"


def test_a_holder_is_settled_only_a_while_after_its_last_lease_ended() -> None:
    leases, clock = table()
    assert leases.settled("c1", 1.0)  # never held anything
    leases.admit(b"m1", "message", "c1", None, 60_000)
    assert not leases.settled("c1", 1.0)
    leases.ack(b"m1")
    assert not leases.settled("c1", 1.0)
    clock.advance(1.0)
    assert leases.settled("c1", 1.0)
    leases.forget("c1")
    assert leases.leases_of("c1") == 0


def test_next_deadline_is_the_earliest_and_due_returns_all_that_passed() -> None:
    leases, clock = table()
    leases.admit(b"late", "late", "c1", None, 3000)
    leases.admit(b"early", "early", "c1", None, 1000)
    assert leases.next_deadline() == 1001.0
    clock.advance(5)
    assert [lease.message_id for lease in leases.due()] == [b"early", b"late"]
    assert leases.next_deadline() is None
