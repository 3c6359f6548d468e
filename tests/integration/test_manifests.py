"""Manifests against two real clusters, east and west, with separate metadata stores."""

import copy
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import (
    ROOT,
    Gateway,
    PulsarCluster,
    bearer,
    clusters_setting,
    start_gateway,
    stop_gateway,
    token,
)

V1 = "broker-gateway/v1"
YAML = {"content-type": "application/yaml"}


@pytest.fixture(scope="module")
def geo(pulsar_cluster: PulsarCluster, west_cluster: PulsarCluster) -> Iterator[httpx.Client]:
    """A gateway publishing on east that manages both clusters."""
    gateway = start_gateway(pulsar_cluster, west_cluster)
    with gateway.client(timeout=60) as client:
        yield client
    stop_gateway(gateway)


@pytest.fixture(scope="module")
def west_gateway(pulsar_cluster: PulsarCluster, west_cluster: PulsarCluster) -> Iterator[Gateway]:
    """A gateway whose data plane is west."""
    gateway = start_gateway(west_cluster, pulsar_cluster)
    yield gateway
    stop_gateway(gateway)


@pytest.fixture(scope="module")
def admins(
    pulsar_cluster: PulsarCluster, west_cluster: PulsarCluster
) -> Iterator[dict[str, httpx.Client]]:
    clients = {c.name: c.admin_client() for c in (pulsar_cluster, west_cluster)}
    yield clients
    for client in clients.values():
        client.close()


def tenant_manifests(
    tenant: str, *, replication: list[str] | None = None, **namespace_spec: Any
) -> list[dict[str, Any]]:
    """A fresh tenant on east and west with one namespace (`{tenant}/app`) and one topic."""
    spec: dict[str, Any] = {"clusters": ["east", "west"]}
    if replication is not None:
        spec["replication"] = replication
    return [
        {"apiVersion": V1, "kind": "Tenant", "metadata": {"name": tenant}, "spec": spec},
        {
            "apiVersion": V1,
            "kind": "Namespace",
            "metadata": {"name": f"{tenant}/app"},
            "spec": namespace_spec,
        },
        {"apiVersion": V1, "kind": "Topic", "metadata": {"name": f"{tenant}/app/events"}},
    ]


def fresh_tenant() -> str:
    return f"tn-{uuid.uuid4().hex[:10]}"


def examples() -> str:
    files = sorted((ROOT / "topics").rglob("*.yaml"))
    return "\n---\n".join(f.read_text() for f in files)


def pending(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {**change, "cluster": cluster}
        for cluster, changes in plan["clusters"].items()
        for change in changes
        if change["action"] != "no-op"
    ]


def test_example_manifests_replicate_messages_published_on_east_to_west(
    geo: httpx.Client, west_gateway: Gateway, admins: dict[str, httpx.Client]
) -> None:
    applied = geo.post("/v1/manifests/apply", content=examples(), headers=YAML)
    assert applied.status_code == 200, applied.text
    assert all(step["status"] == "done" for step in applied.json()["steps"])
    # Each cluster knows the other as a peer, and the tenant may use both.
    assert "west" in admins["east"].get("/clusters").json()
    assert "east" in admins["west"].get("/clusters").json()
    for admin in admins.values():
        assert sorted(admin.get("/tenants/acme").json()["allowedClusters"]) == ["east", "west"]
        assert sorted(admin.get("/namespaces/acme/orders/replication").json()) == [
            "east",
            "west",
        ]

    marker = uuid.uuid4().hex
    order_ids = [f"{marker}-{i}" for i in range(20)]
    events = [
        {"value": {"order_id": o, "amount_cents": 100 + i, "currency": "EUR"}, "key": f"o-{i}"}
        for i, o in enumerate(order_ids)
    ]
    published = geo.post("/v1/topics/acme/orders/created/messages", json={"messages": events})
    assert published.status_code == 200, published.text

    seen: set[str] = set()
    cursor = "earliest"
    deadline = time.monotonic() + 60
    with west_gateway.client(timeout=60) as west:
        while len(seen) < len(events) and time.monotonic() < deadline:
            page = west.get(
                "/v1/topics/acme/orders/created/messages",
                params={"position": cursor, "limit": 500, "wait_ms": 2000},
            )
            assert page.status_code == 200, page.text
            body = page.json()
            cursor = body["next"]
            seen |= {
                m["value"]["order_id"]
                for m in body["messages"]
                if m["value"]["order_id"].startswith(marker)
            }
    assert seen == set(order_ids)


def test_peers_carry_their_token_to_pulsar_but_never_into_plans_or_exports(
    pulsar_cluster: PulsarCluster,
    west_cluster: PulsarCluster,
    geo: httpx.Client,
    admins: dict[str, httpx.Client],
) -> None:
    manifests = examples()
    applied = geo.post("/v1/manifests/apply", content=manifests, headers=YAML)
    assert applied.status_code == 200, applied.text

    # Each cluster's replicator authenticates to its peer with the peer's token (the two
    # clusters sign with different keys, so no other token would do).
    for here, peer in (("east", west_cluster), ("west", pulsar_cluster)):
        registered = admins[here].get(f"/clusters/{peer.name}").json()
        assert registered["authenticationPlugin"].endswith(".AuthenticationToken")
        assert registered.get("authenticationParameters", f"token:{peer.token}") == (
            f"token:{peer.token}"
        )

    answers = [
        applied.text,
        geo.post("/v1/manifests/plan", content=manifests, headers=YAML).text,
        geo.get("/v1/manifests/export", params={"tenant": "acme"}).text,
        geo.get("/v1/manifests/export", params={"tenant": "acme", "format": "yaml"}).text,
    ]
    for answer in answers:
        for cluster in (pulsar_cluster, west_cluster):
            assert str(cluster.token) not in answer


def test_plan_right_after_apply_reports_no_changes(geo: httpx.Client) -> None:
    manifests = examples()
    assert geo.post("/v1/manifests/apply", content=manifests, headers=YAML).status_code == 200

    plan = geo.post("/v1/manifests/plan", content=manifests, headers=YAML)
    assert plan.status_code == 200, plan.text
    assert pending(plan.json()) == []
    assert plan.json()["summary"]["no-op"] > 0
    assert "No changes" in plan.json()["text"]
    again = geo.post("/v1/manifests/apply", content=manifests, headers=YAML)
    assert again.json()["steps"] == []


def test_changing_retention_yields_exactly_one_update_per_cluster(geo: httpx.Client) -> None:
    tenant = fresh_tenant()
    manifests = tenant_manifests(tenant, retention={"time": "1d", "size": "1G"})
    assert geo.post("/v1/manifests/apply", json=manifests).status_code == 200

    manifests[1]["spec"]["retention"] = {"time": "7d", "size": "1G"}
    plan = geo.post("/v1/manifests/plan", json=manifests).json()

    changes = pending(plan)
    assert sorted(c["cluster"] for c in changes) == ["east", "west"]
    for change in changes:
        assert (change["action"], change["kind"], change["name"]) == (
            "update",
            "Namespace",
            f"{tenant}/app",
        )
        assert change["changes"] == [
            {
                "field": "retention",
                "old": {"time": "1d", "size": "1G"},
                "new": {"time": "7d", "size": "1G"},
            }
        ]
        assert not change["destructive"]


def test_dropping_west_from_replication_is_refused_without_allow_destructive(
    geo: httpx.Client, admins: dict[str, httpx.Client]
) -> None:
    tenant = fresh_tenant()
    manifests = tenant_manifests(tenant, replication=["east", "west"])
    assert geo.post("/v1/manifests/apply", json=manifests).status_code == 200

    manifests[1]["spec"]["replication"] = ["east"]
    plan = geo.post("/v1/manifests/plan", json=manifests).json()
    flagged = [c for c in pending(plan) if c["destructive"]]
    assert sorted(c["cluster"] for c in flagged) == ["east", "west"]
    assert all("west" in c["reason"] for c in flagged)

    refused = geo.post("/v1/manifests/apply", json=manifests)
    assert refused.status_code == 409
    assert refused.json()["code"] == "destructive_change_refused"
    for admin in admins.values():
        replication = admin.get(f"/namespaces/{tenant}/app/replication").json()
        assert sorted(replication) == ["east", "west"]

    allowed = geo.post(
        "/v1/manifests/apply", json={"documents": manifests, "allow_destructive": True}
    )
    assert allowed.status_code == 200, allowed.text
    assert admins["east"].get(f"/namespaces/{tenant}/app/replication").json() == ["east"]


def test_an_invalid_manifest_changes_nothing_on_any_cluster(
    geo: httpx.Client, admins: dict[str, httpx.Client]
) -> None:
    tenant = fresh_tenant()
    manifests = tenant_manifests(tenant, replication=["east", "north"])

    response = geo.post("/v1/manifests/apply", json=manifests)

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_manifest"
    assert any("north" in e for e in response.json()["errors"])
    for admin in admins.values():
        assert admin.get(f"/tenants/{tenant}").status_code == 404


def test_a_partition_decrease_is_invalid_and_nothing_else_in_the_set_is_applied(
    geo: httpx.Client, admins: dict[str, httpx.Client]
) -> None:
    tenant = fresh_tenant()
    manifests = tenant_manifests(tenant, retention={"time": "1d", "size": "1G"})
    manifests[2]["spec"] = {"partitions": 3}
    assert geo.post("/v1/manifests/apply", json=manifests).status_code == 200

    changed = copy.deepcopy(manifests)
    changed[2]["spec"] = {"partitions": 2}
    changed[1]["spec"]["retention"] = {"time": "7d", "size": "1G"}
    response = geo.post("/v1/manifests/apply", json=changed)

    assert response.status_code == 422
    assert any("cannot decrease" in e for e in response.json()["errors"])
    for admin in admins.values():
        assert admin.get(f"/persistent/{tenant}/app/events/partitions").json()["partitions"] == 3
        retention = admin.get(f"/namespaces/{tenant}/app/retention").json()
        assert retention["retentionTimeInMinutes"] == 24 * 60


def test_a_schema_change_the_compatibility_rule_forbids_is_invalid(geo: httpx.Client) -> None:
    tenant = fresh_tenant()
    manifests = tenant_manifests(tenant, schema_compatibility="BACKWARD")
    fields = [{"name": "id", "type": "string"}]
    manifests[2]["spec"] = {
        "schema": {"type": "JSON", "definition": {"type": "record", "name": "E", "fields": fields}}
    }
    assert geo.post("/v1/manifests/apply", json=manifests).status_code == 200

    # A new required field: readers of the new schema cannot read old data.
    breaking = copy.deepcopy(manifests)
    breaking[2]["spec"]["schema"]["definition"]["fields"] = [*fields, {"name": "n", "type": "int"}]
    refused = geo.post("/v1/manifests/validate", json=breaking)
    assert refused.status_code == 422
    assert any("schema change refused" in e for e in refused.json()["errors"])

    # An optional field with a default is a compatible evolution.
    evolving = copy.deepcopy(manifests)
    evolving[2]["spec"]["schema"]["definition"]["fields"] = [
        *fields,
        {"name": "n", "type": ["null", "int"], "default": None},
    ]
    assert geo.post("/v1/manifests/validate", json=evolving).status_code == 200
    applied = geo.post("/v1/manifests/apply", json=evolving)
    assert applied.status_code == 200, applied.text
    assert [c["changes"][0]["field"] for c in pending(applied.json())] == ["schema", "schema"]


def test_a_namespace_made_by_hand_exports_and_round_trips_through_apply_as_a_no_op(
    geo: httpx.Client, admins: dict[str, httpx.Client]
) -> None:
    tenant = fresh_tenant()
    east = admins["east"]
    east.put(f"/tenants/{tenant}", json={"adminRoles": ["ops"], "allowedClusters": ["east"]})
    namespace = f"{tenant}/handmade"
    assert east.put(f"/namespaces/{namespace}").status_code == 204
    east.post(
        f"/namespaces/{namespace}/retention",
        json={"retentionTimeInMinutes": 180, "retentionSizeInMB": 512},
    ).raise_for_status()
    east.post(f"/namespaces/{namespace}/messageTTL", json=3600).raise_for_status()
    east.post(f"/namespaces/{namespace}/deduplication", json=True).raise_for_status()
    east.put(f"/persistent/{namespace}/orders/partitions", json=2).raise_for_status()
    east.post(
        f"/persistent/{namespace}/orders/messageTTL", params={"messageTTL": 600}
    ).raise_for_status()
    subscription = geo.put(
        f"/v1/topics/{namespace}/orders/subscriptions/workers",
        json={"max_deliveries": 3, "ack_deadline_ms": 5000},
    )
    assert subscription.status_code == 201, subscription.text

    exported = geo.get("/v1/manifests/export", params={"tenant": tenant})
    assert exported.status_code == 200
    documents = exported.json()["documents"]
    by_name = {d["metadata"]["name"]: d for d in documents}
    assert by_name[namespace]["spec"] == {
        "retention": {"time": "3h", "size": "512M"},
        "message_ttl": "1h",
        "deduplication": True,
    }
    assert by_name[f"{namespace}/orders"]["spec"] == {"partitions": 2, "message_ttl": "10m"}
    assert by_name["workers"]["spec"] == {"ack_deadline_ms": 5000, "max_deliveries": 3}

    applied = geo.post("/v1/manifests/apply", json=documents)
    assert applied.status_code == 200, applied.text
    assert pending(applied.json()) == []
    assert applied.json()["steps"] == []

    as_yaml = geo.get("/v1/manifests/export", params={"tenant": tenant, "format": "yaml"})
    assert as_yaml.headers["content-type"].startswith("application/yaml")
    plan = geo.post("/v1/manifests/plan", content=as_yaml.text, headers=YAML)
    assert pending(plan.json()) == []


def test_prune_deletes_only_what_the_manifests_tenants_do_not_declare(
    geo: httpx.Client, admins: dict[str, httpx.Client]
) -> None:
    tenant = fresh_tenant()
    manifests = tenant_manifests(tenant)
    assert geo.post("/v1/manifests/apply", json=manifests).status_code == 200
    east = admins["east"]
    assert east.put(f"/namespaces/{tenant}/stray").status_code == 204
    other = fresh_tenant()
    east.put(f"/tenants/{other}", json={"adminRoles": [], "allowedClusters": ["east"]})
    assert east.put(f"/namespaces/{other}/kept").status_code == 204

    assert pending(geo.post("/v1/manifests/plan", json=manifests).json()) == []
    pruning = geo.post("/v1/manifests/plan", json=manifests, params={"prune": "true"}).json()
    assert [(c["cluster"], c["action"], c["name"], c["destructive"]) for c in pending(pruning)] == [
        ("east", "delete", f"{tenant}/stray", True)
    ]
    assert (
        geo.post("/v1/manifests/apply", json=manifests, params={"prune": "true"}).status_code == 409
    )
    applied = geo.post(
        "/v1/manifests/apply",
        json={"documents": manifests, "prune": True, "allow_destructive": True},
    )
    assert applied.status_code == 200, applied.text
    assert east.get(f"/namespaces/{tenant}/stray/retention").status_code == 404
    assert east.get(f"/namespaces/{other}/kept/retention").status_code in (200, 204)


def test_cli_validates_plans_and_exports_against_both_clusters(
    pulsar_cluster: PulsarCluster, west_cluster: PulsarCluster, geo: httpx.Client, tmp_path: Path
) -> None:
    env = {**os.environ, "GATEWAY_CLUSTERS": clusters_setting(pulsar_cluster, west_cluster)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker_gateway", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert cli("apply", "topics").returncode == 0
    validated = cli("validate", "topics")
    assert validated.returncode == 0, validated.stderr
    planned = cli("plan", "topics", "--detailed-exitcode")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "No changes" in planned.stdout

    exported = tmp_path / "acme.yaml"
    assert cli("export", "--tenant", "acme", "-o", str(exported)).returncode == 0
    assert "kind: Tenant" in exported.read_text()
    assert cli("plan", str(exported), "--detailed-exitcode").returncode == 0

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"apiVersion: {V1}\nkind: Tenant\nmetadata: {{name: x}}\nspec: {{clusters: [mars]}}\n"
    )
    invalid = cli("apply", str(bad))
    assert invalid.returncode == 1
    assert "unknown cluster mars" in invalid.stderr


def test_registering_clusters_with_each_other_needs_the_platform_wide_admin(
    pulsar_cluster: PulsarCluster, west_cluster: PulsarCluster, admins: dict[str, httpx.Client]
) -> None:
    # A cluster east does not know yet: west's broker under another name.
    north = dataclasses.replace(west_cluster, name="north")
    gateway = start_gateway(pulsar_cluster, north)
    tenant = fresh_tenant()
    documents = [
        {
            "apiVersion": V1,
            "kind": "Tenant",
            "metadata": {"name": tenant},
            "spec": {"clusters": ["east", "north"]},
        }
    ]
    tenant_admin = bearer(token(tenants=[tenant], scopes=["admin"]))
    try:
        with gateway.client() as client:
            plan = client.post("/v1/manifests/plan", json=documents, headers=tenant_admin)
            assert plan.status_code == 200, plan.text
            assert {"action": "create", "kind": "Cluster", "name": "north"} in [
                {k: c[k] for k in ("action", "kind", "name")}
                for c in plan.json()["clusters"]["east"]
            ]
            refused = client.post("/v1/manifests/apply", json=documents, headers=tenant_admin)
    finally:
        stop_gateway(gateway)
    assert refused.status_code == 403
    assert "platform-wide admin" in refused.json()["detail"]
    assert "north" not in admins["east"].get("/clusters").json()
    assert admins["east"].get(f"/tenants/{tenant}").status_code == 404
