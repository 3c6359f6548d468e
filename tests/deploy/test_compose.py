"""docker/compose.yaml as a user runs it: Pulsar east and west, the apply job, two gateway
replicas. The test Pulsar image stands in for the official one (PULSAR_IMAGE)."""

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.deploy.conftest import compose_command, docker
from tests.integration.conftest import ROOT, bearer, free_port, token

COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
SECRET = "compose-tests-hs256-secret-of-32-or-more-characters"
SERVICES = ("east", "west", "apply", "gateway-1", "gateway-2")


@dataclass(frozen=True)
class Stack:
    project: str
    replicas: tuple[str, str]

    def containers(self) -> dict[str, str]:
        """Service name -> container id, for this project's containers, running or not."""
        ids = docker(
            "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={self.project}"
        )
        found = {}
        for container in ids.split():
            labels = json.loads(docker("inspect", "--format", "{{json .Config.Labels}}", container))
            found[labels["com.docker.compose.service"]] = container
        return found


def compose(project: str, env: dict[str, str], *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [*compose_command(), "--project-name", project, "--file", str(COMPOSE_FILE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"compose {args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def healthy(container: str) -> bool:
    state = json.loads(docker("inspect", "--format", "{{json .State}}", container))
    status: str | None = state.get("Health", {}).get("Status")
    return status == "healthy"


@pytest.fixture(scope="module")
def stack(gateway_image: str, pulsar_image: str) -> Iterator[Stack]:
    """`compose up` with the test images; `compose down --volumes` afterwards."""
    project = f"bgtest{uuid.uuid4().hex[:8]}"
    ports = (free_port(), free_port())
    env = {
        **os.environ,
        "GATEWAY_IMAGE": gateway_image,
        "PULSAR_IMAGE": pulsar_image,
        "GATEWAY_1_PORT": str(ports[0]),
        "GATEWAY_2_PORT": str(ports[1]),
        "GATEWAY_AUTH_HS256_SECRET": SECRET,
        "GATEWAY_RECEIPT_SECRET": "compose-tests-receipt-secret",
    }
    stack = Stack(project, (f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"))
    try:
        compose(project, env, "up", "--detach", "--no-build")
        deadline = time.monotonic() + 300
        while True:
            containers = stack.containers()
            replicas = [containers.get(name) for name in ("gateway-1", "gateway-2")]
            if all(c is not None and healthy(c) for c in replicas):
                break
            if time.monotonic() > deadline:
                logs = compose(project, env, "logs", "--tail", "30")
                pytest.fail(f"the replicas were not healthy in 300 s:\n{logs[-6000:]}")
            time.sleep(2)
        yield stack
    finally:
        compose(project, env, "down", "--volumes", "--timeout", "30")
        leftovers = [
            docker(kind, "ls", "--quiet", "--filter", f"label=com.docker.compose.project={project}")
            for kind in ("container", "volume", "network")
        ]
        assert leftovers == ["", "", ""], "compose down left some behind"


def test_up_brings_pulsar_the_apply_job_and_both_replicas_up(stack: Stack) -> None:
    containers = stack.containers()
    assert sorted(containers) == sorted(SERVICES)
    for service in ("east", "west", "gateway-1", "gateway-2"):
        assert healthy(containers[service]), service
    apply = json.loads(docker("inspect", "--format", "{{json .State}}", containers["apply"]))
    assert (apply["Status"], apply["ExitCode"]) == ("exited", 0)
    assert "Traceback" not in docker("logs", containers["apply"])


def test_the_manifests_in_topics_are_applied_on_both_clusters(stack: Stack) -> None:
    admin = {"Authorization": f"Bearer {token(secret=SECRET)}"}
    manifests = "\n---\n".join(
        path.read_text() for path in sorted((ROOT / "topics").rglob("*.yaml"))
    )
    plan = httpx.post(
        f"{stack.replicas[0]}/v1/manifests/plan",
        content=manifests,
        headers={**admin, "Content-Type": "application/yaml"},
        timeout=60,
    )
    assert plan.status_code == 200, plan.text
    summary = plan.json()["summary"]
    assert (summary["create"], summary["update"], summary["delete"]) == (0, 0, 0)
    assert summary["no-op"] > 0
    exported = httpx.get(
        f"{stack.replicas[1]}/v1/manifests/export", params={"tenant": "acme"}, headers=admin
    )
    assert exported.status_code == 200, exported.text
    names = {(d["kind"], d["metadata"]["name"]) for d in exported.json()["documents"]}
    assert {("Tenant", "acme"), ("Topic", "acme/orders/created")} <= names


def test_a_message_published_through_one_replica_is_read_through_the_other(stack: Stack) -> None:
    headers = bearer(token(secret=SECRET))
    topic = f"acme/orders/compose-{uuid.uuid4().hex[:8]}"
    published = httpx.post(
        f"{stack.replicas[0]}/v1/topics/{topic}/messages",
        json={"messages": [{"value": {"order_id": "o-1"}, "key": "o-1"}]},
        headers=headers,
        timeout=30,
    )
    assert published.status_code == 200, published.text
    read = httpx.get(
        f"{stack.replicas[1]}/v1/topics/{topic}/messages",
        params={"position": "earliest"},
        headers=headers,
        timeout=30,
    )
    assert read.status_code == 200, read.text
    [message] = read.json()["messages"]
    assert message["value"] == {"order_id": "o-1"}
    assert message["message_id"] == published.json()["results"][0]["message_id"]
