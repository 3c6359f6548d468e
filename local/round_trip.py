"""Produce one message and consume it back with pulsar-client: proof the broker works.

Usage: python local/round_trip.py pulsar://127.0.0.1:6650

With PULSAR_AUTH_TOKEN set (a JWT), the client authenticates with it. It comes from the
environment rather than the command line so that it never shows in the process list.
"""

import os
import sys
import uuid

import pulsar


def main(service_url: str) -> None:
    topic = f"persistent://public/default/round-trip-{uuid.uuid4().hex}"
    token = os.environ.get("PULSAR_AUTH_TOKEN")
    client = pulsar.Client(
        service_url,
        operation_timeout_seconds=10,
        authentication=pulsar.AuthenticationToken(token) if token else None,
    )
    try:
        consumer = client.subscribe(topic, "round-trip")
        producer = client.create_producer(topic)
        body = uuid.uuid4().bytes
        producer.send(body)
        message = consumer.receive(timeout_millis=10_000)
        consumer.acknowledge(message)
        if message.data() != body:
            sys.exit("round trip returned a different message")
        consumer.unsubscribe()
    finally:
        client.close()


if __name__ == "__main__":
    main(sys.argv[1])
