"""The audit trail of applies: over HTTP and from the CLI, however they end."""

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def gateway_on_east(pulsar_cluster: PulsarCluster) -> Iterator[Gateway]:
    gateway = start_gateway(pulsar_cluster)
    yield gateway
    stop_gateway(gateway)


def admin_of(tenant: str) -> dict[str, str]:
    return bearer(token(principal=f"ops-{tenant}", tenants=[tenant], scopes=["admin", "consume"]))


def documents(tenant: str, *topics: dict[str, Any]) -> list[dict[str, Any]]:
    def document(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": V1, "kind": kind, "metadata": {"name": name}, "spec": spec}

    return [
        document("Tenant", tenant, {"clusters": ["east"]}),
        document("Namespace", f"{tenant}/app", {}),
        *(document("Topic", f"{tenant}/app/{t.pop('name')}", t) for t in topics),
    ]


def digest_of(docs: list[dict[str, Any]]) -> str:
    canonical = json.dumps(docs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def trail(client: httpx.Client, tenant: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = client.get("/v1/manifests/audit", params={"tenant": tenant}, headers=headers)
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()["records"]
    return records


def test_applies_are_recorded_whoever_makes_them_and_however_they_end(
    gateway_on_east: Gateway, pulsar_cluster: PulsarCluster
) -> None:
    tenant = f"ta-{uuid.uuid4().hex[:10]}"
    ops = admin_of(tenant)
    with gateway_on_east.client(timeout=60) as http:
        # 1: applied.
        first = documents(tenant, {"name": "orders", "partitions": 2})
        assert http.post("/v1/manifests/apply", json=first, headers=ops).status_code == 200
        # 2: refused, destructive (a topic deleted by prune).
        kept = documents(tenant)
        refused = http.post("/v1/manifests/apply", json=kept, params={"prune": "true"}, headers=ops)
        assert refused.status_code == 409, refused.text
        # 3: failed at a step: Pulsar refuses a schema that is not Avro.
        bogus = {"type": "record", "name": "B", "fields": [{"name": "x", "type": "nosuch"}]}
        bad = {"name": "bad", "schema": {"type": "JSON", "definition": bogus}}
        failing = documents(tenant, {"name": "orders", "partitions": 2}, bad)
        failed = http.post("/v1/manifests/apply", json=failing, headers=ops)
        assert failed.status_code == 502, failed.text
        records = trail(http, tenant, ops)

    assert [r["outcome"] for r in records] == ["applied", "refused", "failed"]
    applied, refusal, failure = records
    assert applied["actor"] == f"ops-{tenant}"
    assert applied["digest"] == digest_of(first)
    assert applied["tenants"] == [tenant]
    assert applied["options"] == {"allow_destructive": False, "prune": False}
    created = [(c["action"], c["kind"], c["name"]) for c in applied["plan"]["clusters"]["east"]]
    assert ("create", "Topic", f"{tenant}/app/orders") in created
    assert len(applied["steps"]) == len(created)
    assert refusal["error"]["code"] == "destructive_change_refused"
    assert refusal["options"]["prune"] is True and refusal["steps"] == []
    assert failure["error"]["code"] == "apply_failed"
    assert failure["steps"], "the steps that ran before the failure are recorded"
    assert all(r["time"].endswith("+00:00") for r in records)
    assert pulsar_cluster.token is not None
    assert pulsar_cluster.token not in json.dumps(records), "a secret reached the trail"


def test_the_trail_is_a_topic_the_read_api_replays_and_only_admins_see_it(
    gateway_on_east: Gateway,
) -> None:
    tenant = f"ta-{uuid.uuid4().hex[:10]}"
    ops = admin_of(tenant)
    with gateway_on_east.client(timeout=60) as http:
        assert (
            http.post("/v1/manifests/apply", json=documents(tenant), headers=ops).status_code == 200
        )
        page = http.get(
            f"/v1/topics/{tenant}/broker-gateway/manifest-audit/messages",
            params={"position": "earliest"},
            headers=ops,
        )
        assert page.status_code == 200, page.text
        [message] = page.json()["messages"]
        assert message["value"]["outcome"] == "applied"

        other = bearer(token(tenants=["someone-else"], scopes=["admin"]))
        denied = http.get("/v1/manifests/audit", params={"tenant": tenant}, headers=other)
        assert denied.status_code == 403

        # The reserved namespace is the gateway's: never declared, exported or pruned.
        exported = http.get("/v1/manifests/export", params={"tenant": tenant}, headers=ops)
        names = [d["metadata"]["name"] for d in exported.json()["documents"]]
        assert f"{tenant}/broker-gateway" not in names
        pruned = http.post(
            "/v1/manifests/plan", json=documents(tenant), params={"prune": "true"}, headers=ops
        )
        assert "broker-gateway" not in pruned.text
        declared = documents(tenant)
        declared[1]["metadata"]["name"] = f"{tenant}/broker-gateway"
        invalid = http.post("/v1/manifests/validate", json=declared, headers=ops)
        assert invalid.status_code == 422


def test_cli_applies_are_recorded_with_the_user_and_shown_by_audit(
    pulsar_cluster: PulsarCluster, tmp_path: Any
) -> None:
    tenant = f"ta-{uuid.uuid4().hex[:10]}"
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(documents(tenant)))
    env = {
        **os.environ,
        "GATEWAY_CLUSTERS": clusters_setting(pulsar_cluster),
        "LOGNAME": "alice",
        "USER": "alice",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker_gateway", *args],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    applied = cli("apply", str(manifest))
    assert applied.returncode == 0, applied.stderr
    shown = cli("audit", "--tenant", tenant, "--json")
    assert shown.returncode == 0, shown.stderr
    [record] = json.loads(shown.stdout)["records"]
    assert record["actor"] == "cli:alice"
    assert record["outcome"] == "applied"
    text = cli("audit", "--tenant", tenant)
    assert "cli:alice" in text.stdout and "applied" in text.stdout
