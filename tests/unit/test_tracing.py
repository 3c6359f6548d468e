from broker_gateway import tracing


def test_tracing_is_off_unless_an_otlp_endpoint_is_configured() -> None:
    assert not tracing.enabled({})
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})


def test_the_standard_switches_turn_it_off() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert not tracing.enabled({**endpoint, "OTEL_SDK_DISABLED": "true"})
    assert not tracing.enabled({**endpoint, "OTEL_TRACES_EXPORTER": "none"})


def test_a_trace_context_is_found_in_headers_or_properties() -> None:
    assert tracing.extract({}) is None
    context = tracing.extract(
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    )
    assert context is not None
    assert tracing.carried({"tracestate": "a=1"})
    assert not tracing.carried({"other": "x"})
