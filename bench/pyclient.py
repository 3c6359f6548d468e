"""Publish with pulsar-client for Python, the client the gateway itself is built on.

Not a load generator for the gateway: a reference row. It shows what one Python process can
push through pulsar-client at all (send_async, batching on, the gateway's producer
settings), which bounds any gateway written in Python on that client. Prints a result in
bench/loadgen's JSON shape.

    python bench/pyclient.py --service-url pulsar://127.0.0.1:6650 --topic persistent://...
"""

import argparse
import json
import os
import threading
import time
from typing import Any

import _pulsar
import pulsar

from broker_gateway.pulsar.producers import PRODUCER_OPTIONS


def percentiles(latencies_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies_ms)
    if not ordered:
        return {"p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0, "count": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "p50": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": round(ordered[-1], 3),
        "count": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service-url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    options = parser.parse_args()

    client = pulsar.Client(
        options.service_url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)
    )
    # The gateway's producer settings, but blocking when full: a closed loop.
    producer = client.create_producer(options.topic, block_if_queue_full=True, **PRODUCER_OPTIONS)
    payload = os.urandom(options.payload)
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0
    first_error = ""
    measuring = False
    window_start = window_end = 0.0

    def on_sent(sent_at: float, result: Any, _: Any) -> None:
        nonlocal errors, first_error
        now = time.perf_counter()
        with lock:
            if result != _pulsar.Result.Ok:
                errors += 1
                first_error = first_error or str(result)
            elif measuring and window_start <= sent_at < window_end:
                latencies.append((now - sent_at) * 1000)

    send = producer._producer.send_async
    started = time.perf_counter()
    window_start = started + options.warmup
    window_end = window_start + options.duration
    measuring = True
    while (now := time.perf_counter()) < window_end:
        builder = _pulsar.MessageBuilder()
        builder.content(payload)
        send(builder.build(), lambda result, message_id, at=now: on_sent(at, result, message_id))
    producer.flush()
    producer.close()
    client.close()
    count = len(latencies)
    print(
        json.dumps(
            {
                "path": "python-client-publish",
                "messages": count,
                "requests": count,
                "errors": errors,
                "seconds": options.duration,
                "msgs_per_s": round(count / options.duration, 1),
                "mb_per_s": round(count * options.payload / options.duration / 1e6, 6),
                "latency_ms": percentiles(latencies),
                "first_error": first_error,
            }
        )
    )


if __name__ == "__main__":
    main()
