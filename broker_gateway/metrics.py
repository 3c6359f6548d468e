"""Prometheus metrics, in a registry owned by each app (none at import time).

Under several workers (GATEWAY_WORKERS), `serve` points PROMETHEUS_MULTIPROC_DIR at a
directory of their own: each worker's values live there, and /metrics, whichever worker
answers it, adds up all of them.
"""

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_http_request_duration_seconds",
            "HTTP request latency by route template, until the response starts.",
            ["route", "method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.published = Counter(
            "gateway_messages_published",
            "Messages published, by outcome (persisted or failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.read = Counter(
            "gateway_messages_read", "Messages returned by reads.", registry=self.registry
        )

    def render(self) -> bytes:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            workers = CollectorRegistry()
            MultiProcessCollector(workers)  # type: ignore[no-untyped-call]
            return generate_latest(workers)
        return generate_latest(self.registry)
