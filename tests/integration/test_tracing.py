"""A trace a client starts crosses the gateway into Pulsar and back out: the publish's
`traceparent` becomes the parent of the gateway's `send` span, whose context the messages
carry in their properties; a pull's `receive` span links to it, and the pulled message
brings it to the worker. The gateway runs in this process here, with the OpenTelemetry
SDK's in-memory exporter; Pulsar is the real one. Without tracing configured, the client's
context still travels in the messages."""

import json
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import SecretStr

from broker_gateway.app import create_app
from broker_gateway.settings import Cluster, Settings
from tests.integration.conftest import (
    GATEWAY_SECRET,
    PulsarCluster,
    bearer,
    clusters_setting,
    free_port,
)

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
WORKER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
WORKER_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture(scope="module")
def traced(pulsar_cluster: PulsarCluster, spans: InMemorySpanExporter) -> Iterator[httpx.Client]:
    """A gateway in this process (so its spans reach `spans`), on the real cluster."""
    settings = Settings(
        clusters=[Cluster(**c) for c in json.loads(clusters_setting(pulsar_cluster))],
        auth_hs256_secret=SecretStr(GATEWAY_SECRET),
        access_log=False,
    )
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, loop="asyncio", log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="traced gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=bearer(), timeout=30) as c:
            yield c
    finally:
        server.should_exit = True
        thread.join(30)


def _ancestors(span: ReadableSpan, spans: InMemorySpanExporter) -> list[str]:
    """The span ids above `span`, nearest first: exported ones, then the remote parent."""
    by_id = {s.context.span_id: s for s in spans.get_finished_spans() if s.context is not None}
    found = []
    parent = span.parent
    while parent is not None:
        found.append(f"{parent.span_id:016x}")
        above = by_id.get(parent.span_id)
        parent = None if above is None else above.parent
    return found


def _one(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in spans.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in spans.get_finished_spans()]
    return found[0]


def test_a_client_trace_crosses_publish_pulsar_and_pull(
    traced: httpx.Client, spans: InMemorySpanExporter
) -> None:
    topic = f"public/default/traced-{uuid.uuid4().hex[:8]}"
    published = traced.post(
        f"/v1/topics/{topic}/messages",
        json={"messages": [{"value": 1}, {"value": 2}]},
        headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "tracestate": "shop=7"},
    )
    assert published.status_code == 200, published.text

    send = _one(spans, f"send {topic}")
    assert send.kind == SpanKind.PRODUCER
    assert send.context is not None and send.parent is not None
    assert f"{send.context.trace_id:032x}" == CLIENT_TRACE
    assert CLIENT_SPAN in _ancestors(send, spans)  # under the gateway's HTTP server span
    assert send.attributes is not None
    assert send.attributes["messaging.system"] == "pulsar"
    assert send.attributes["messaging.destination.name"] == f"persistent://{topic}"
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.batch.message_count"] == 2
    carried = f"00-{CLIENT_TRACE}-{send.context.span_id:016x}-{int(send.context.trace_flags):02x}"

    # In Pulsar, under the property names the OpenTelemetry Java agent uses.
    read = traced.get(f"/v1/topics/{topic}/messages", params={"position": "earliest"})
    for message in read.json()["messages"]:
        assert message["properties"]["traceparent"] == carried
        assert message["properties"]["tracestate"] == "shop=7"

    queue = f"/v1/topics/{topic}/subscriptions/workers"
    assert traced.put(queue, json={"initial_position": "earliest"}).status_code == 201
    worker = {"traceparent": f"00-{WORKER_TRACE}-{WORKER_SPAN}-01"}
    pulled = traced.post(
        f"{queue}/pull", json={"max_messages": 2, "wait_ms": 5000}, headers=worker
    ).json()["messages"]
    assert [m["properties"]["traceparent"] for m in pulled] == [carried, carried]
    acked = traced.post(
        f"{queue}/ack", json={"receipts": [m["receipt"] for m in pulled]}, headers=worker
    )
    assert acked.json()["succeeded"] == 2

    receive = _one(spans, f"receive {topic}")
    assert receive.kind == SpanKind.CONSUMER
    assert receive.context is not None
    assert f"{receive.context.trace_id:032x}" == WORKER_TRACE
    assert WORKER_SPAN in _ancestors(receive, spans)
    assert {(link.context.trace_id, link.context.span_id) for link in receive.links} == {
        (send.context.trace_id, send.context.span_id)
    }
    assert receive.attributes is not None
    assert receive.attributes["messaging.operation.type"] == "receive"
    assert receive.attributes["messaging.batch.message_count"] == 2
    settle = _one(spans, f"settle {topic}")
    assert settle.attributes is not None
    assert settle.attributes["messaging.operation.type"] == "settle"
    assert settle.attributes["messaging.operation.name"] == "ack"
    assert settle.context is not None and f"{settle.context.trace_id:032x}" == WORKER_TRACE


def test_a_message_that_has_its_own_trace_context_keeps_it(
    traced: httpx.Client, spans: InMemorySpanExporter
) -> None:
    topic = f"public/default/traced-{uuid.uuid4().hex[:8]}"
    own = f"00-{WORKER_TRACE}-{WORKER_SPAN}-01"
    published = traced.post(
        f"/v1/topics/{topic}/messages",
        json={"messages": [{"value": 1, "properties": {"traceparent": own}}, {"value": 2}]},
    )
    assert published.status_code == 200, published.text
    send = _one(spans, f"send {topic}")
    assert send.context is not None
    assert f"{send.context.trace_id:032x}" != WORKER_TRACE  # the request started a new trace
    messages = traced.get(f"/v1/topics/{topic}/messages", params={"position": "earliest"})
    [first, second] = [m["properties"].get("traceparent") for m in messages.json()["messages"]]
    assert first == own
    assert second.startswith(f"00-{send.context.trace_id:032x}-{send.context.span_id:016x}-")


def test_without_tracing_the_clients_context_travels_in_the_messages(
    http: httpx.Client, topic: str
) -> None:
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    published = http.post(
        f"/v1/topics/{topic}/messages",
        json={"messages": [{"value": 1}]},
        headers={"traceparent": traceparent},
    )
    assert published.status_code == 200, published.text
    [message] = http.get(f"/v1/topics/{topic}/messages", params={"position": "earliest"}).json()[
        "messages"
    ]
    assert message["properties"]["traceparent"] == traceparent
