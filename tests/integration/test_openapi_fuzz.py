"""Schemathesis against /openapi.json with a valid token: no 5xx, no response off-schema.

Bounded to a few minutes: a few examples per operation, a fixed seed (a failure reproduces),
a time budget, and a gateway whose long polls are capped short. The live stream is left
out: it never ends, and its framing is tested in test_stream.
"""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Gateway, PulsarCluster, start_gateway, stop_gateway, token

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


@pytest.fixture(scope="module")
def fuzzed(pulsar_cluster: PulsarCluster) -> Iterator[Gateway]:
    gateway = start_gateway(pulsar_cluster, max_wait_ms="100", tenant_requests_per_s="0")
    yield gateway
    stop_gateway(gateway)


def test_no_operation_answers_5xx_or_off_its_schema(fuzzed: Gateway) -> None:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    run = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{fuzzed.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {token()}",
            "--checks",
            CHECKS,
            "--exclude-path-regex",
            "/stream$",
            "--max-examples",
            "10",
            "--seed",
            "20261122",
            "--max-time",
            "150",
            "--request-timeout",
            "30",
            # One worker: Hypothesis' source inspection is not thread-safe.
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
