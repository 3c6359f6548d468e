"""The fault suite's checker finds what it must: it is what makes a green fault run mean
something."""

from tests.faults.history import (
    Fault,
    Findings,
    History,
    Lease,
    Publish,
    Request,
    Settle,
    Stored,
    check_answers,
    check_queue,
    check_recovery,
    check_topic,
)


def _publish(writer: str, mode: str, seq: int, status: int | None, at: float = 0.0) -> Publish:
    return Publish(writer, mode, seq, Request("publish", "r0", at, at + 0.01, status))


def _history(*publishes: Publish) -> History:
    history = History()
    for p in publishes:
        history.publish(p)
    return history


def test_an_acknowledged_message_missing_from_the_topic_is_lost() -> None:
    history = _history(
        _publish("w0", "plain", 0, 200),
        _publish("w0", "plain", 1, 200),
        _publish("w0", "plain", 2, 503),  # not acknowledged: its absence is no loss
    )
    findings = Findings()
    check_topic(history, [Stored("w0", 0)], findings)
    assert findings.acknowledged == 2
    assert findings.lost == [("w0", 1)]


def test_duplicates_are_split_by_whether_the_writer_used_a_key() -> None:
    history = _history(
        _publish("w0", "idempotent", 0, 200),
        _publish("w1", "sequenced", 0, 200),
        _publish("w2", "plain", 0, 200),
    )
    stored = [Stored(w, 0) for w in ("w0", "w0", "w1", "w2", "w2", "w2")]
    findings = Findings()
    check_topic(history, stored, findings)
    assert (findings.duplicated_keyed, findings.duplicated_unkeyed) == (1, 2)
    assert findings.keyed_duplicates == ["w0 (idempotent) 0: 2 copies"]


def test_a_writer_s_messages_stored_out_of_order_are_found_and_a_late_duplicate_is_not() -> None:
    history = _history(*(_publish("w0", "plain", n, 200) for n in range(3)))
    findings = Findings()
    check_topic(history, [Stored("w0", n) for n in (0, 2, 1)], findings)
    assert findings.out_of_order == ["w0: 1 stored after 2"]

    findings = Findings()
    check_topic(history, [Stored("w0", n) for n in (0, 1, 0, 2)], findings)
    assert findings.out_of_order == []


def test_only_503_and_504_with_retry_after_are_clear_answers() -> None:
    history = History()
    for status, code, retry_after in [
        (200, None, None),
        (None, None, None),  # refused: a replica that is gone
        (503, "broker_unavailable", "5"),
        (504, "broker_timeout", None),  # no Retry-After
        (502, "broker_error", None),
        (500, "internal_error", None),
        (422, "invalid_request", None),  # the load sends nothing invalid
        (429, "rate_limited", "1"),
    ]:
        history.request(Request("publish", "r0", 0, 1, status, code, retry_after))
    findings = Findings()
    check_answers(history, findings)
    assert (findings.requests, findings.refused, findings.fault_answers) == (8, 1, 2)
    assert findings.bad_errors == [
        "publish on r0: 504 broker_timeout",
        "publish on r0: 502 broker_error",
        "publish on r0: 500 internal_error",
        "publish on r0: 422 invalid_request",
    ]


def test_recovery_waits_for_every_replica_to_serve_again() -> None:
    history = History()
    history.publish(Publish("w0", "plain", 0, Request("publish", "r0", 0.0, 0.1, 200)))
    history.publish(Publish("w1", "plain", 0, Request("publish", "r1", 0.0, 0.1, 200)))
    history.fault(Fault("broker killed", 1.0, 2.0))
    history.publish(Publish("w0", "plain", 1, Request("publish", "r0", 2.5, 3.0, 200)))
    history.publish(Publish("w1", "plain", 1, Request("publish", "r1", 2.1, 2.2, 503)))
    findings = Findings()
    check_recovery(history, findings)
    assert findings.recovery_s == [float("inf")]  # r1 never served again

    history.publish(Publish("w1", "plain", 1, Request("publish", "r1", 3.5, 4.0, 200)))
    findings = Findings()
    check_recovery(history, findings)
    assert findings.recovery_s == [2.0]


def _lease(
    worker: str, replica: str, receipt: str, pulled_at: float, message_id: str = "1:0:-1:-1"
) -> Lease:
    return Lease(worker, replica, ("w0", 0), message_id, receipt, pulled_at, pulled_at + 10)


def test_a_message_leased_to_two_workers_at_once_is_found_unless_a_fault_ended_the_first() -> None:
    history = History()
    history.lease(_lease("k0", "r0", "a", 0.0))
    history.lease(_lease("k1", "r1", "b", 1.0))  # while k0 still holds it
    history.settle(Settle("a", 2.0, None))  # and k0's ack was accepted
    history.settle(Settle("b", 3.0, None))
    findings = Findings()
    check_queue(history, {("w0", 0)}, findings)
    assert findings.concurrent_leases == [
        "('w0', 0): k1 pulled it at 1.0 s from r1 while k0 held it (pulled at 0.0 s from r0, "
        "acked at 2.0 s); faults: "
    ]
    assert (findings.redeliveries, findings.unacked) == (1, [])

    history.fault(Fault("replica SIGKILL", 0.5, 0.8, replica="r0"))
    findings = Findings()
    check_queue(history, {("w0", 0)}, findings)
    assert findings.concurrent_leases == []


def test_a_lease_whose_ack_was_refused_or_that_expired_is_no_double_delivery() -> None:
    history = History()
    history.lease(_lease("k0", "r0", "a", 0.0))
    history.lease(_lease("k1", "r0", "b", 11.0))  # after k0's deadline
    history.lease(_lease("k2", "r0", "c", 12.0))
    history.settle(Settle("a", 12.5, None))
    history.settle(Settle("b", 13.0, "lease_expired"))  # k1 was told it had lost it
    history.settle(Settle("c", 14.0, None))
    findings = Findings()
    check_queue(history, {("w0", 0), ("w0", 1)}, findings)
    assert findings.concurrent_leases == []
    assert findings.unacked == [("w0", 1)]


def test_a_message_taken_before_a_broken_connection_may_be_handed_out_just_after_it() -> None:
    history = History()
    history.fault(Fault("connections reset", 0.0, 1.0))  # the broker's side: every replica
    history.lease(_lease("k0", "r0", "a", 1.5))  # r0 had it buffered when its link broke
    history.lease(_lease("k1", "r1", "b", 1.6))  # Pulsar redelivered it to r1
    history.settle(Settle("a", 2.0, None))
    history.settle(Settle("b", 2.1, None))
    findings = Findings()
    check_queue(history, {("w0", 0)}, findings)
    assert findings.concurrent_leases == []

    history = History()
    history.fault(Fault("connections reset", 0.0, 1.0))
    history.lease(_lease("k0", "r0", "a", 5.0))  # long after: no excuse
    history.lease(_lease("k1", "r1", "b", 5.1))
    history.settle(Settle("a", 6.0, None))
    findings = Findings()
    check_queue(history, {("w0", 0)}, findings)
    assert len(findings.concurrent_leases) == 1


def test_two_copies_of_one_message_leased_at_once_are_two_messages_not_a_double_lease() -> None:
    history = History()  # a plain retry stored (w0, 0) twice: two Pulsar messages
    history.lease(_lease("k0", "r0", "a", 0.0, message_id="1:0:-1:-1"))
    history.lease(_lease("k1", "r0", "b", 0.5, message_id="1:7:-1:-1"))
    history.settle(Settle("a", 1.0, None))
    history.settle(Settle("b", 1.0, None))
    findings = Findings()
    check_queue(history, {("w0", 0)}, findings)
    assert (findings.concurrent_leases, findings.redeliveries) == ([], 0)
