"""Tracing with OpenTelemetry, off unless configured with the standard `OTEL_*` variables.

W3C trace context always travels: a `traceparent` (and `tracestate`) arriving on a publish
is stored in each message's properties under those names, the ones the OpenTelemetry Java
agent uses for Pulsar, so the traces of Java and Go consumers join it; read, pulled and
streamed messages carry theirs back. With tracing on (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set, `OTEL_SDK_DISABLED` not true), the gateway's own
spans, exported over OTLP/HTTP, sit in between, after the OpenTelemetry messaging
conventions: `send {topic}` (producer), `receive {topic}` (consumer, linked to each pulled
message's context), `settle {topic}` (ack, nack, extend).
"""

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from broker_gateway import __version__
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.messages import OutgoingMessage

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_FIELDS: Final = frozenset(_PROPAGATOR.fields)  # traceparent, tracestate
tracer: Final = trace.get_tracer("broker_gateway", __version__)


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure() -> None:
    """Export spans over OTLP/HTTP, batched, when the environment asks for it. The
    service is `broker-gateway` unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES)
    says otherwise."""
    if not enabled():
        return
    # Imported only when used: the SDK and exporter cost startup time and memory.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": "broker-gateway"} | _service_from_env())
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def _service_from_env() -> dict[str, str]:
    name = os.environ.get("OTEL_SERVICE_NAME")
    return {"service.name": name} if name else {}


def _parent(headers: Mapping[str, str]) -> Context | None:
    """The context a span of a request starts in: the request's own span where one is
    current (FastAPI's HTTP server span, itself a child of the request's `traceparent`),
    else the request's `traceparent`; None for a new trace."""
    if trace.get_current_span().get_span_context().is_valid:
        return None
    return extract(headers)


def extract(carrier: Mapping[str, str]) -> Context | None:
    """The trace context in headers or message properties; None when there is none."""
    if "traceparent" not in carrier:
        return None
    return _PROPAGATOR.extract(carrier)


def context_of(span: Span) -> dict[str, str]:
    """`span`'s W3C context, as the properties a message carries it in."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return carrier


def _attributes(topic: TopicName, operation: str, name: str, count: int) -> Attributes:
    return {
        "messaging.system": "pulsar",
        "messaging.destination.name": topic.persistent,
        "messaging.operation.type": operation,
        "messaging.operation.name": name,
        "messaging.batch.message_count": count,
    }


def recording() -> bool:
    """Whether spans go anywhere: a tracer provider is set (configure(), or a test's)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def sending(
    topic: TopicName, messages: list[OutgoingMessage], headers: Mapping[str, str]
) -> AbstractContextManager[None]:
    """A publish: its `send` span, in the request's trace (see _parent), whose context
    each message carries in its properties (a message with a `traceparent` of its own
    keeps it). Without tracing, the client's context is what the messages carry; without
    either, nothing (the common case costs a lookup and a type check)."""
    if "traceparent" not in headers and not recording():
        return _NOTHING
    return _sending(topic, messages, headers)


_NOTHING: Final = nullcontext()


@contextmanager
def _sending(
    topic: TopicName, messages: list[OutgoingMessage], headers: Mapping[str, str]
) -> Iterator[None]:
    with tracer.start_as_current_span(
        f"send {topic.path}",
        context=_parent(headers),
        kind=SpanKind.PRODUCER,
        attributes=_attributes(topic, "send", "send", len(messages)),
    ) as span:
        context = context_of(span)
        for message in messages:
            if context and not carried(message.properties):
                message.properties.update(context)
        yield


def received(
    topic: TopicName,
    messages: Iterable[Mapping[str, str]],
    headers: Mapping[str, str],
    started_ns: int,
) -> None:
    """A pull's `receive` span, from `started_ns` until now, child of the worker's context
    and linked to the context each pulled message carries (its `send`)."""
    if not recording():
        return
    links = []
    count = 0
    for properties in messages:
        count += 1
        context = extract(properties)
        if context is not None:
            linked = trace.get_current_span(context).get_span_context()
            if linked.is_valid:
                links.append(Link(linked))
    span = tracer.start_span(
        f"receive {topic.path}",
        context=_parent(headers),
        kind=SpanKind.CONSUMER,
        links=links,
        attributes=_attributes(topic, "receive", "pull", count),
        start_time=started_ns,
    )
    span.end()


def settled(
    topic: TopicName, operation: str, count: int, headers: Mapping[str, str], started_ns: int
) -> None:
    """An ack's, nack's or extend's `settle` span, from `started_ns` until now."""
    if not recording():
        return
    span = tracer.start_span(
        f"settle {topic.path}",
        context=_parent(headers),
        kind=SpanKind.CLIENT,
        attributes=_attributes(topic, "settle", operation, count),
        start_time=started_ns,
    )
    span.end()


def carried(properties: Mapping[str, str]) -> bool:
    """Whether a message's properties carry a trace context already."""
    return not _FIELDS.isdisjoint(properties)
