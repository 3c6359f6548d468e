"""A web page on another origin uses the gateway in a real (headless) Chromium: it
publishes with fetch(), follows the topic with EventSource and a stream token, and when the
gateway closes the stream (the replica restarts), the browser reconnects by itself and
resumes from Last-Event-ID: no message lost, none twice."""

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.browser import Browser, Page, static_site
from tests.integration.conftest import (
    Gateway,
    PulsarCluster,
    free_port,
    start_gateway,
    stop_gateway,
    token,
)
from tests.integration.test_stream import publish

PAGE = "<!doctype html><title>orders dashboard</title><p>live orders</p>"


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The web app's origin: another port, so another origin than the gateway's."""
    with static_site({"/": ("text/html", PAGE)}) as origin:
        yield origin


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as browser:
        yield browser


def _serve(pulsar_cluster: PulsarCluster, site: str, port: int) -> Gateway:
    return start_gateway(
        pulsar_cluster,
        port=port,
        cors_origins=site,
        receipt_secret="browser-tests-receipt-secret",  # a restarted replica takes its tokens
        shutdown_delay_s="0",
    )


def _wait_for(page: Page, expression: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, (expression, page.console, page.errors)
        time.sleep(0.1)


def test_a_page_on_another_origin_publishes_and_follows_a_topic_across_a_restart(
    pulsar_cluster: PulsarCluster, site: str, browser: Browser, topic: str
) -> None:
    port = free_port()
    gateway = _serve(pulsar_cluster, site, port)
    try:
        page = browser.page(f"{site}/")
        page.evaluate(f"window.gw = {gateway.url!r}; window.topic = {topic!r};")
        page.evaluate(f"window.auth = {{Authorization: 'Bearer {token()}'}};")
        published = page.evaluate(
            """(async () => {
              const r = await fetch(`${gw}/v1/topics/${topic}/messages`, {
                method: "POST",
                headers: {...auth, "Content-Type": "application/json",
                          "Idempotency-Key": "order-batch-1"},
                body: JSON.stringify({messages: [1, 2, 3].map(v => ({value: v}))}),
              });
              return {status: r.status, cluster: r.headers.get("Pulsar-Cluster"),
                      requestId: r.headers.get("X-Request-Id"),
                      results: (await r.json()).results.length};
            })()"""
        )
        assert published["status"] == 200
        assert published["cluster"]  # an exposed header the page can read
        assert published["requestId"]
        assert published["results"] == 3
        page.evaluate(
            """(async () => {
              const r = await fetch(`${gw}/v1/topics/${topic}/stream-tokens`,
                                    {method: "POST", headers: auth});
              const {stream_url} = await r.json();
              window.values = [];
              window.opened = 0;
              window.source = new EventSource(`${gw}${stream_url}&position=earliest`);
              source.onopen = () => { opened += 1; };
              source.onmessage = (e) => values.push(JSON.parse(e.data).value);
            })()"""
        )
        _wait_for(page, "values.length === 3")

        # The replica restarts: its stream ends with `event: reconnect` and the connection
        # closes; the EventSource reconnects by itself, with Last-Event-ID, to the new one.
        stop_gateway(gateway)
        gateway = _serve(pulsar_cluster, site, port)
        with gateway.client() as client:
            publish(client, topic, [4, 5, 6])
        _wait_for(page, "values.length >= 6 && opened >= 2")
        time.sleep(1)  # anything repeated would have come by now
        assert page.evaluate("values") == [1, 2, 3, 4, 5, 6]
        assert page.evaluate("source.readyState") == 1  # OPEN
        page.evaluate("source.close()")
    finally:
        stop_gateway(gateway)


def test_a_page_on_an_origin_not_allowed_cannot_read_answers(
    pulsar_cluster: PulsarCluster, site: str, browser: Browser, topic: str
) -> None:
    gateway = start_gateway(pulsar_cluster, cors_origins="https://elsewhere.example")
    try:
        page = browser.page(f"{site}/")
        outcome = page.evaluate(
            f"""fetch("{gateway.url}/v1/topics/{topic}/messages", {{
                  method: "POST", headers: {{Authorization: "Bearer {token()}",
                                             "Content-Type": "application/json"}},
                  body: JSON.stringify({{messages: [{{value: 1}}]}}),
                }}).then(() => "read", (e) => e.name)"""
        )
        assert outcome == "TypeError"  # the browser refused: the preflight was not allowed
        response = httpx.get(
            f"{gateway.url}/v1/topics/{topic}/messages",
            params={"position": "earliest"},
            headers={"Authorization": f"Bearer {token()}"},
        )
        assert response.json()["messages"] == []  # and nothing was sent
    finally:
        stop_gateway(gateway)
