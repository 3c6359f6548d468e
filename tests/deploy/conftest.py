"""Deployment fixtures: a Docker engine, the images docker/images builds, and containers.

`make test-deploy` runs these tests; `docker/images` installs and starts what they need (a
Docker engine and compose from Debian, Debian base images made with mmdebstrap) on a fresh
machine. The gateway containers use the host's network, so they reach the suite's own
Pulsar (tests/integration/conftest.py) on 127.0.0.1, with its token authentication.
"""

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import httpx
import pytest

from tests.integration.conftest import (
    GATEWAY_SECRET,
    ROOT,
    PulsarCluster,
    bearer,
    clusters_setting,
    free_port,
    pulsar_cluster,
)

__all__ = ["pulsar_cluster"]  # the suite's own east cluster, for the image tests

IMAGES = ROOT / "docker" / "images"
GATEWAY_IMAGE = os.environ.get("GATEWAY_IMAGE", "broker-gateway:dev")
PULSAR_IMAGE = os.environ.get("PULSAR_IMAGE", "broker-gateway-test/pulsar:4.0.7")
# Debian's client, the one docker/images builds with: it matches Debian's engine.
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    """Run a docker command; its standard output, stripped."""
    result = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args[:3])} ... failed: {result.stderr.strip()}")
    return result.stdout.strip()


def build(target: str) -> None:
    result = subprocess.run([str(IMAGES), target], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"docker/images {target} failed:\n{result.stderr[-4000:]}")


@pytest.fixture(scope="session")
def gateway_image() -> str:
    """The gateway image, built from this checkout on a Debian base."""
    build("gateway")
    return GATEWAY_IMAGE


@pytest.fixture(scope="session")
def pulsar_image() -> str:
    """A Pulsar image made from local/'s Maven Central jars and a Debian JRE."""
    build("pulsar")
    return PULSAR_IMAGE


def compose_command() -> list[str]:
    """`docker compose` where the plugin is installed, else Debian's docker-compose."""
    plugin = subprocess.run([DOCKER, "compose", "version"], capture_output=True, check=False)
    if plugin.returncode == 0:
        return [DOCKER, "compose"]
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("no docker compose: docker/images engine installs one")
    return [found]


def wait_ready(url: str, container: str, timeout_s: float = 90) -> None:
    """Until `url`/readyz answers 200; fails with the container's log if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    logs = docker("logs", "--tail", "40", container, check=False)
    pytest.fail(f"{container} was not ready in {timeout_s:.0f} s:\n{logs}")


@dataclass(frozen=True)
class Container:
    name: str
    url: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=bearer(), timeout=30)

    def logs(self) -> str:
        result = subprocess.run(
            [DOCKER, "logs", self.name], capture_output=True, text=True, check=False
        )
        return result.stdout + result.stderr


class StartGateway(Protocol):
    def __call__(self, receipt_secret: str = ..., **settings: str) -> Container: ...


@pytest.fixture
def start_gateway(gateway_image: str, pulsar_cluster: PulsarCluster) -> Iterator[StartGateway]:
    """Starts gateway containers (`docker run` on the host network, in front of the suite's
    Pulsar) and removes them after the test."""
    names: list[str] = []

    def start(receipt_secret: str = "deploy-tests-receipt-secret", **settings: str) -> Container:
        name = f"bg-test-{uuid.uuid4().hex[:8]}"
        port = free_port()
        environment = {
            "GATEWAY_PORT": str(port),
            "GATEWAY_CLUSTERS": clusters_setting(pulsar_cluster),
            "GATEWAY_AUTH_HS256_SECRET": GATEWAY_SECRET,
            "GATEWAY_RECEIPT_SECRET": receipt_secret,
            **{f"GATEWAY_{k.upper()}": v for k, v in settings.items()},
        }
        # Values go through the environment of `docker run`, not its command line.
        flags = [flag for key in environment for flag in ("--env", key)]
        names.append(name)
        subprocess.run(
            [DOCKER, "run", "--detach", "--name", name, "--network", "host", *flags, gateway_image],
            env={**os.environ, **environment},
            capture_output=True,
            check=True,
        )
        container = Container(name, f"http://127.0.0.1:{port}")
        wait_ready(container.url, name)
        return container

    yield start
    for name in names:
        docker("rm", "--force", name, check=False)
