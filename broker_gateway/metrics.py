"""Prometheus metrics, in a registry owned by each app (none at import time).

Every name starts with `broker_gateway_`, in base units (seconds, bytes); labels stay
bounded: route templates, tenants, clusters, outcomes, never topics or principals. The
README's Metrics table lists them all (a test checks every one it names exists).

Under several workers (GATEWAY_WORKERS), `serve` points PROMETHEUS_MULTIPROC_DIR at a
directory of their own: each worker's values live there, and /metrics, whichever worker
answers it, adds up all of them.
"""

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from broker_gateway.pulsar.regions import Region

PREFIX = "broker_gateway_"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Sampled before each scrape: name -> how many are open now.
        self._sampled: dict[str, Callable[[], int]] = {}

        def counter(name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, help, labels, registry=self.registry)

        def gauge(
            name: str,
            help: str,
            labels: tuple[str, ...] = (),
            mode: Literal["livesum", "livemin"] = "livesum",
        ) -> Gauge:
            return Gauge(
                PREFIX + name, help, labels, multiprocess_mode=mode, registry=self.registry
            )

        # HTTP
        self.requests = counter(
            "http_requests",
            "HTTP requests by route template, method and status.",
            ("route", "method", "status"),
        )
        self.latency = Histogram(
            PREFIX + "http_request_duration_seconds",
            "HTTP request latency by route template, until the response starts.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Publish and read
        self.published = counter(
            "messages_published",
            "Messages published, by tenant and outcome (persisted or failed).",
            ("tenant", "outcome"),
        )
        self.published_bytes = counter(
            "published_bytes", "Bytes of publish request bodies accepted, by tenant.", ("tenant",)
        )
        self.delivered = counter(
            "messages_delivered",
            "Messages handed to clients, by tenant and how (read, stream, pull).",
            ("tenant", "via"),
        )
        self.idempotency_replays = counter(
            "idempotency_replays",
            "Publishes answered from an earlier one with the same Idempotency-Key.",
            ("tenant",),
        )
        self.pulsar_latency = Histogram(
            PREFIX + "pulsar_operation_duration_seconds",
            "Pulsar operations as the gateway waits for them: send (until persisted), "
            "read (a batch), pull (a lease), ack, nack, extend.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Work queues
        self.queue_pulls = counter("queue_pulls", "Pull requests answered, by tenant.", ("tenant",))
        self.queue_redeliveries = counter(
            "queue_redeliveries",
            "Messages leased again (delivery_attempt above 1), by tenant.",
            ("tenant",),
        )
        self.queue_settles = counter(
            "queue_settles",
            "Receipts settled, by tenant, operation (ack, nack, extend) and outcome "
            "(succeeded, failed).",
            ("tenant", "operation", "outcome"),
        )
        self.queue_forwarded = counter(
            "queue_forwarded_settles",
            "Settles forwarded to the replica holding the lease, by operation.",
            ("operation",),
        )
        self.queue_lease_expiries = counter(
            "queue_lease_expiries", "Leases whose ack deadline passed (the message comes again)."
        )
        self.queue_dead_lettered = counter(
            "queue_dead_lettered",
            "Messages moved to a dead-letter topic after their last delivery, by tenant.",
            ("tenant",),
        )
        self.queue_redriven = counter(
            "queue_redriven", "Dead letters moved back to their topic, by tenant.", ("tenant",)
        )
        # Open now (sampled at each scrape)
        self.open = gauge(
            "open",
            "Open now on this replica: producers, readers (kept between pages), queue "
            "consumers, live streams, leases held.",
            ("resource",),
        )
        # Regions
        self.cluster_up = gauge(
            "cluster_up",
            "1 while the gateway routes to the cluster, 0 while it is failed over from it.",
            ("cluster",),
            mode="livemin",
        )
        self.cluster_down = counter(
            "cluster_down",
            "Times the cluster was found down (each time, its replicated topics failed over).",
            ("cluster",),
        )
        self.failed_over = counter(
            "messages_failed_over",
            "Messages persisted on a peer cluster because the home cluster was down, by the "
            "cluster that persisted them.",
            ("cluster",),
        )

    def region_changed(self, region: "Region") -> None:
        self.cluster_up.labels(region.name).set(1 if region.up else 0)
        if not region.up:
            self.cluster_down.labels(region.name).inc()

    def sample(self, resource: str, count: Callable[[], int]) -> None:
        """Report `count()` as what is open of `resource`, at each scrape."""
        self._sampled[resource] = count

    def refresh(self) -> None:
        """The gauges of what is open, as it is now."""
        for resource, count in self._sampled.items():
            self.open.labels(resource).set(count())

    async def refresh_forever(self, every_s: float = 5.0) -> None:
        """Under several workers, each one's gauges are as fresh as this, whichever
        worker answers a scrape."""
        while True:
            await asyncio.sleep(every_s)
            self.refresh()

    def render(self) -> bytes:
        self.refresh()
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            workers = CollectorRegistry()
            MultiProcessCollector(workers)  # type: ignore[no-untyped-call]
            return generate_latest(workers)
        return generate_latest(self.registry)
