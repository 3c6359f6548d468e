"""The gateway image (docker/Dockerfile), run as users run it, in front of a real Pulsar."""

import json
import subprocess
import threading
import time
import uuid

import httpx
import pytest

from tests.deploy.conftest import DOCKER, StartGateway, docker
from tests.integration.conftest import bearer, pull_all


def test_the_image_is_labelled_non_root_and_has_no_compiler(gateway_image: str) -> None:
    config = json.loads(docker("image", "inspect", gateway_image))[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["broker-gateway"]
    assert config["Cmd"] == ["serve"]
    assert "8000/tcp" in config["ExposedPorts"]
    assert "GATEWAY_HOST=0.0.0.0" in config["Env"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert len(labels["org.opencontainers.image.revision"]) == 40
    assert "org.opencontainers.image.source" in labels
    tools = docker(
        "run", "--rm", "--entrypoint", "sh", gateway_image, "-c",
        "for t in gcc cc c++ make pip; do command -v $t; done; ls /run/secrets 2>/dev/null",
        check=False,
    )  # fmt: skip
    assert tools == "/opt/broker-gateway/bin/pip"  # the venv's, for inspection; no compiler


def test_a_container_serves_publish_and_read_as_a_non_root_user(
    start_gateway: StartGateway,
) -> None:
    gateway = start_gateway()
    uid = docker("exec", gateway.name, "sh", "-c", "awk '/^Uid:/ {print $2}' /proc/1/status")
    assert uid == "10001"
    topic = f"public/default/image-{uuid.uuid4().hex[:8]}"
    with gateway.client() as client:
        published = client.post(
            f"/v1/topics/{topic}/messages", json={"messages": [{"value": {"n": 1}}]}
        )
        assert published.status_code == 200, published.text
        read = client.get(f"/v1/topics/{topic}/messages", params={"position": "earliest"})
    assert read.status_code == 200, read.text
    [message] = read.json()["messages"]
    assert message["value"] == {"n": 1}
    assert message["message_id"] == published.json()["results"][0]["message_id"]
    health = docker("inspect", "--format", "{{.State.Health.Status}}", gateway.name)
    assert health in {"starting", "healthy"}  # the image's own HEALTHCHECK runs


def test_docker_stop_drains_an_open_stream_and_exits_0(start_gateway: StartGateway) -> None:
    gateway = start_gateway(shutdown_grace_s="3")
    topic = f"public/default/image-stop-{uuid.uuid4().hex[:8]}"
    stream_opened = threading.Event()
    stream_ended: list[str] = []

    def follow() -> None:
        url = f"{gateway.url}/v1/topics/{topic}/stream"
        try:
            with httpx.stream("GET", url, headers=bearer(), timeout=30) as response:
                stream_opened.set()
                for _ in response.iter_lines():
                    pass
            stream_ended.append("closed")
        except httpx.HTTPError as exc:
            stream_ended.append(type(exc).__name__)

    follower = threading.Thread(target=follow)
    follower.start()
    assert stream_opened.wait(15)

    grace_s = 15
    started = time.monotonic()
    docker("stop", "--time", str(grace_s), gateway.name, timeout=grace_s + 30)
    stopped_in = time.monotonic() - started
    follower.join(10)

    state = json.loads(docker("inspect", "--format", "{{json .State}}", gateway.name))
    assert state["ExitCode"] == 0, gateway.logs()
    assert not state["OOMKilled"]
    assert stopped_in < grace_s  # ended by itself, not killed at the deadline
    assert stream_ended  # the stream was ended for the client, not left hanging
    assert "Traceback" not in gateway.logs()


def test_a_message_pulled_through_one_container_is_acked_through_the_other(
    start_gateway: StartGateway,
) -> None:
    first, second = start_gateway(), start_gateway()
    topic = f"public/default/image-queue-{uuid.uuid4().hex[:8]}"
    queue = f"/v1/topics/{topic}/subscriptions/work"
    with first.client() as one, second.client() as other:
        configured = one.put(queue, json={"initial_position": "earliest"})
        assert configured.status_code == 201, configured.text
        published = one.post(
            f"/v1/topics/{topic}/messages", json={"messages": [{"value": i} for i in range(10)]}
        )
        assert published.status_code == 200, published.text

        pulled = pull_all(one, queue, 10, ack_deadline_ms=60_000)

        acked = other.post(f"{queue}/ack", json={"receipts": list(pulled.values())})
        assert acked.status_code == 200, acked.text
        assert acked.json() == {"succeeded": 10, "failed": []}

        # The acks reach Pulsar through the container that leased the messages: the backlog
        # empties, and nothing comes back.
        deadline = time.monotonic() + 20
        while (stats := other.get(queue).json())["backlog"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (stats["backlog"], stats["unacked"]) == (0, 0), stats
        for client in (one, other, one):
            again = client.post(f"{queue}/pull", json={"max_messages": 10, "wait_ms": 1000})
            assert again.status_code == 200, again.text
            assert again.json()["messages"] == []


@pytest.mark.parametrize("command", [["healthcheck"], ["--help"]])
def test_the_cli_runs_in_the_image(gateway_image: str, command: list[str]) -> None:
    """healthcheck fails (exit 1, a line on stderr) when nothing listens, without a trace."""
    result = subprocess.run(
        [DOCKER, "run", "--rm", "--network", "none", gateway_image, *command],
        capture_output=True,
        text=True,
        check=False,
    )
    if command == ["healthcheck"]:
        assert result.returncode == 1
        assert result.stderr.startswith("unhealthy: http://127.0.0.1:8000/readyz")
        assert "Traceback" not in result.stderr
    else:
        assert result.returncode == 0
        assert "serve" in result.stdout
