"""Audit records: what an apply leaves behind, built without a broker."""

from typing import Any

import pytest

from broker_gateway.errors import (
    ApplyFailed,
    BrokerUnavailable,
    DestructiveChangeRefused,
    Forbidden,
    GatewayError,
    InvalidManifest,
)
from broker_gateway.manifests.audit import digest, entry, tenants_named

RAW: list[tuple[str, Any]] = [
    ("a.yaml", {"kind": "Tenant", "metadata": {"name": "acme"}, "spec": {"clusters": ["east"]}}),
    ("a.yaml", {"kind": "Subscription", "metadata": {"name": "s", "topic": "beta/ns/t"}}),
]


def test_the_digest_is_the_same_whatever_the_key_order_or_source() -> None:
    tenant = {"spec": {"clusters": ["east"]}, "metadata": {"name": "acme"}, "kind": "Tenant"}
    reordered = [("b.yaml", tenant), RAW[1]]
    assert digest(RAW) == digest(reordered)
    assert digest(RAW).startswith("sha256:") and len(digest(RAW)) == 7 + 64
    assert digest(RAW) != digest(RAW[:1])


def test_a_digest_of_documents_that_are_not_json_still_comes_out() -> None:
    odd: list[tuple[str, Any]] = [("x", {1: "a", "b": 2**80}), ("y", {(1, 2): None, "z": 1})]
    assert digest(odd).startswith("sha256:")


def test_tenants_are_named_by_documents_and_by_a_subscriptions_topic() -> None:
    assert tenants_named(RAW) == {"acme", "beta"}
    assert tenants_named([("x", "not a document"), ("y", {"metadata": {"name": 5}})]) == set()


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "applied"),
        (DestructiveChangeRefused(["east: delete Topic a/b/c"]), "refused"),
        (Forbidden("no"), "refused"),
        (InvalidManifest(["bad"]), "invalid"),
        (ApplyFailed("step 3", [{"status": "done"}]), "failed"),
        (BrokerUnavailable("down"), "failed"),
    ],
)
def test_each_way_an_apply_ends_has_its_outcome(error: GatewayError | None, outcome: str) -> None:
    options = {"allow_destructive": False, "prune": False}
    record = entry(RAW, actor="ops", options=options, plan=None, steps=[], error=error)
    assert record["outcome"] == outcome
    assert record["tenants"] == ["acme", "beta"]
    assert ("error" in record) == (error is not None)
    if isinstance(error, ApplyFailed):
        assert record["steps"] == [{"status": "done"}]
