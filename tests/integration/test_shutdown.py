"""A replica told to stop: unready at once, then streams and long polls end with what they
have, nothing it accepted fails, and it exits within its grace."""

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.integration.conftest import PulsarCluster, bearer, start_gateway, stop_gateway
from tests.integration.test_stream import sse_events


def test_sigterm_turns_unready_then_ends_streams_and_long_polls_and_exits(
    pulsar_cluster: PulsarCluster, topic: str, tmp_path: Path
) -> None:
    log = tmp_path / "gateway.log"
    gateway = start_gateway(pulsar_cluster, log=log, shutdown_delay_s="2", shutdown_grace_s="20")
    queue = f"/v1/topics/{topic}/subscriptions/work"
    answers: dict[str, Any] = {}

    def follow() -> None:
        with (
            gateway.client() as client,
            client.stream("GET", f"/v1/topics/{topic}/stream") as response,
        ):
            answers["stream"] = [e for e in sse_events(response.iter_lines()) if "event" in e]

    def long_poll(name: str, method: str, path: str, **request: Any) -> None:
        started = time.monotonic()
        with gateway.client() as client:
            response = client.request(method, path, **request)
        answers[name] = (response.status_code, response.json(), time.monotonic() - started)

    try:
        with gateway.client() as client:
            assert client.put(queue, json={}).status_code == 201
            polls = [
                threading.Thread(target=follow),
                threading.Thread(
                    target=long_poll,
                    args=("read", "GET", f"/v1/topics/{topic}/messages"),
                    kwargs={"params": {"wait_ms": 25_000}},
                ),
                threading.Thread(
                    target=long_poll,
                    args=("pull", "POST", f"{queue}/pull"),
                    kwargs={"json": {"wait_ms": 25_000}},
                ),
            ]
            for poll in polls:
                poll.start()
            time.sleep(1)  # all three wait on the broker now

            gateway.process.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            # Unready at once, while it still accepts connections (shutdown_delay_s).
            ready = httpx.get(f"{gateway.url}/readyz", headers=bearer(), timeout=5)
            assert ready.status_code == 503
            assert ready.json()["code"] == "shutting_down"
            assert ready.headers["retry-after"].isdigit()
            for poll in polls:
                poll.join(timeout=15)
        exit_code = gateway.process.wait(timeout=30)
        exited_in = time.monotonic() - stopped
    finally:
        stop_gateway(gateway)

    assert answers["stream"] == [
        {"event": "reconnect", "data": orjson.dumps(_reconnect()).decode()}
    ]
    for name in ("read", "pull"):
        status, body, waited = answers[name]
        assert status == 200 and body["messages"] == [], (name, body)
        assert waited < 10, name  # not the 25 s it asked for
    # uvicorn re-raises the signal once it has shut down: the process ends by SIGTERM, as
    # its sender expects (as PID 1 of a container it exits 0: tests/deploy).
    assert exit_code == -signal.SIGTERM
    assert exited_in < 20
    output = log.read_text()
    assert "Traceback" not in output
    assert "timeout graceful shutdown exceeded" not in output


def _reconnect() -> dict[str, str]:
    return {"reason": "this replica is shutting down: reconnect to resume"}
