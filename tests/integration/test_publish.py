"""Publishing over HTTP: batches, raw bodies, delays, idempotency, deduplication, errors."""

import base64
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pulsar
from starlette.datastructures import Headers

from broker_gateway.api.publish import request_fingerprint
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.idempotency import (
    TAG_PROPERTY,
    encode_record,
    message_tag,
    pending_record,
    record_key,
)
from broker_gateway.pulsar.messages import position_of
from broker_gateway.settings import Settings
from tests.integration.conftest import PulsarCluster, bearer, start_gateway, stop_gateway


def read_all(http: httpx.Client, topic: str) -> list[dict[str, object]]:
    page = http.get(f"/v1/topics/{topic}/messages", params={"limit": 1000})
    assert page.status_code == 200, page.text
    messages: list[dict[str, object]] = page.json()["messages"]
    return messages


def test_raw_body_publishes_one_message_with_header_key_and_properties(
    http: httpx.Client, topic: str
) -> None:
    response = http.post(
        f"/v1/topics/{topic}/messages",
        content=b"\x89PNG raw bytes",
        headers={
            "Content-Type": "image/png",
            "X-Message-Key": "img-1",
            "X-Message-Property-Source": "camera",
            "X-Message-Event-Time": "2026-11-21T10:00:00Z",
        },
    )
    assert response.status_code == 200, response.text
    [message] = read_all(http, topic)
    assert base64.b64decode(str(message["data"])) == b"\x89PNG raw bytes"
    assert message["key"] == "img-1"
    assert message["properties"] == {"source": "camera"}
    assert message["event_time"] == 1795255200000


def test_batch_keeps_order_and_every_field(http: httpx.Client, topic: str) -> None:
    response = http.post(
        f"/v1/topics/{topic}/messages",
        json={
            "messages": [
                {"value": i, "key": f"k{i % 3}", "ordering_key": "o", "properties": {"n": str(i)}}
                for i in range(50)
            ]
            + [{"data": base64.b64encode(b"bytes").decode()}]
        },
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(51))
    messages = read_all(http, topic)
    assert [m["value"] for m in messages[:50]] == list(range(50))
    assert messages[7]["key"] == "k1" and messages[7]["ordering_key"] == "o"
    assert messages[7]["properties"] == {"n": "7"}
    assert messages[50]["data"] == base64.b64encode(b"bytes").decode()
    assert [m["message_id"] for m in messages] == [r["message_id"] for r in results]


def test_delayed_message_reaches_a_subscription_no_earlier_than_its_delay(
    http: httpx.Client, native: pulsar.Client, topic: str
) -> None:
    consumer = native.subscribe(
        f"persistent://{topic}", "delayed", consumer_type=pulsar.ConsumerType.Shared
    )
    sent_at = time.time()
    response = http.post(
        f"/v1/topics/{topic}/messages",
        json={
            "messages": [
                {"value": "after", "deliver_after_ms": 2000},
                {"value": "at", "deliver_at": int((sent_at + 2) * 1000)},
            ]
        },
    )
    assert response.status_code == 200, response.text
    received = []
    for _ in range(2):
        message = consumer.receive(timeout_millis=15_000)
        received.append((orjson.loads(message.data()), time.time() - sent_at))
        consumer.acknowledge(message)
    consumer.close()
    assert {value for value, _ in received} == {"after", "at"}
    assert all(elapsed >= 2.0 for _, elapsed in received), received


def test_retry_with_the_same_idempotency_key_stores_one_copy_and_returns_the_same_ids(
    http: httpx.Client, topic: str
) -> None:
    body = {"messages": [{"value": {"order": 1}}, {"value": {"order": 2}}]}
    headers = {"Idempotency-Key": f"order-batch-{uuid.uuid4()}"}
    first = http.post(f"/v1/topics/{topic}/messages", json=body, headers=headers)
    retry = http.post(f"/v1/topics/{topic}/messages", json=body, headers=headers)
    assert first.status_code == retry.status_code == 200
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert len(read_all(http, topic)) == 2


def test_idempotency_key_survives_a_gateway_restart(
    pulsar_cluster: PulsarCluster, topic: str
) -> None:
    body = {"messages": [{"value": "once"}]}
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first_gateway = start_gateway(pulsar_cluster)
    try:
        first = httpx.post(
            f"{first_gateway.url}/v1/topics/{topic}/messages",
            json=body,
            headers={**headers, **bearer()},
        )
    finally:
        stop_gateway(first_gateway)
    second_gateway = start_gateway(pulsar_cluster)
    try:
        retry = httpx.post(
            f"{second_gateway.url}/v1/topics/{topic}/messages",
            json=body,
            headers={**headers, **bearer()},
        )
        with second_gateway.client() as http:
            stored = read_all(http, topic)
    finally:
        stop_gateway(second_gateway)
    assert first.status_code == retry.status_code == 200
    assert retry.json() == first.json()
    assert len(stored) == 1


class _DiedMidPublish:
    """What a replica killed in the middle of a publish under an Idempotency-Key leaves
    behind: its `pending` record, and perhaps the messages it had sent, tagged."""

    def __init__(self, native: pulsar.Client, topic: str, key: str, body: bytes) -> None:
        self.native = native
        self.topic = topic
        self.record_key = record_key(TopicName.parse(*topic.split("/")), key)
        headers = Headers({"content-type": "application/json"})
        self.fingerprint = request_fingerprint(headers, body)

    def pending(self, age_s: float) -> None:
        recorded_ms = int((time.time() - age_s) * 1000)
        producer = self.native.create_producer(f"persistent://{Settings().idempotency_topic}")
        payload = encode_record(pending_record(self.fingerprint, recorded_ms))
        producer.send(payload, partition_key=self.record_key)
        producer.close()

    def persisted(self, payload: bytes, index: int) -> str:
        producer = self.native.create_producer(f"persistent://{self.topic}")
        message_id = producer.send(
            payload, properties={TAG_PROPERTY: message_tag(self.record_key, index)}
        )
        producer.close()
        return str(position_of(message_id))


def test_a_retry_after_a_replica_died_mid_publish_returns_what_it_persisted_and_adds_no_copy(
    http: httpx.Client, native: pulsar.Client, topic: str
) -> None:
    key = str(uuid.uuid4())
    body = orjson.dumps({"messages": [{"value": "first"}, {"value": "second"}]})
    died = _DiedMidPublish(native, topic, key, body)
    died.pending(age_s=120)  # long enough ago that it can no longer complete
    first_id = died.persisted(b'"first"', 0)  # the broker had the first, not the second

    retry = http.post(
        f"/v1/topics/{topic}/messages",
        content=body,
        headers={"Idempotency-Key": key, "content-type": "application/json"},
    )
    assert retry.status_code == 200, retry.text
    results = retry.json()["results"]
    assert results[0] == {"index": 0, "message_id": first_id, "cluster": "east"}
    assert [m["value"] for m in read_all(http, topic)] == ["first", "second"]
    again = http.post(
        f"/v1/topics/{topic}/messages",
        content=body,
        headers={"Idempotency-Key": key, "content-type": "application/json"},
    )
    assert again.json() == retry.json()
    assert again.headers["idempotent-replayed"] == "true"


def test_a_retry_while_the_first_attempt_may_still_complete_is_409_with_retry_after(
    http: httpx.Client, native: pulsar.Client, topic: str
) -> None:
    key = str(uuid.uuid4())
    body = orjson.dumps({"messages": [{"value": "once"}]})
    native.create_producer(f"persistent://{topic}").close()  # the topic, empty
    _DiedMidPublish(native, topic, key, body).pending(age_s=0)
    retry = http.post(
        f"/v1/topics/{topic}/messages",
        content=body,
        headers={"Idempotency-Key": key, "content-type": "application/json"},
    )
    assert retry.status_code == 409, retry.text
    assert retry.json()["code"] == "idempotency_key_in_use"
    assert 1 <= int(retry.headers["retry-after"]) <= 60
    assert read_all(http, topic) == []


def test_one_idempotency_key_at_two_replicas_at_once_is_stored_once(
    pulsar_cluster: PulsarCluster, topic: str
) -> None:
    gateways = [start_gateway(pulsar_cluster) for _ in range(2)]
    try:
        for attempt in range(5):
            key = f"twice-{attempt}-{uuid.uuid4()}"
            body = {"messages": [{"value": attempt}]}
            headers = {"Idempotency-Key": key, **bearer()}
            with ThreadPoolExecutor(2) as pool:
                posts = [
                    pool.submit(
                        httpx.post,
                        f"{g.url}/v1/topics/{topic}/messages",
                        json=body,
                        headers=headers,
                        timeout=30,
                    )
                    for g in gateways
                ]
                answers = [post.result() for post in posts]
            statuses = sorted(a.status_code for a in answers)
            assert statuses in ([200, 200], [200, 409]), [a.text for a in answers]
            ok = [a.json() for a in answers if a.status_code == 200]
            assert all(o == ok[0] for o in ok)
        with gateways[0].client() as http:
            stored = [m["value"] for m in read_all(http, topic)]
    finally:
        for gateway in gateways:
            stop_gateway(gateway)
    assert stored == [0, 1, 2, 3, 4]


def test_idempotency_key_reused_with_another_body_is_rejected(
    http: httpx.Client, topic: str
) -> None:
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    url = f"/v1/topics/{topic}/messages"
    assert http.post(url, json={"messages": [{"value": 1}]}, headers=headers).status_code == 200
    reused = http.post(url, json={"messages": [{"value": 2}]}, headers=headers)
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    assert [m["value"] for m in read_all(http, topic)] == [1]


def test_producer_and_sequence_ids_are_deduplicated_by_the_broker(
    http: httpx.Client, admin: httpx.Client, namespace: str
) -> None:
    admin.post(f"/namespaces/{namespace}/deduplication", json=True).raise_for_status()
    topic = f"{namespace}/dedup"
    body = {
        "producer": "billing-1",
        "messages": [{"value": n, "sequence_id": n} for n in range(5)],
    }
    first = http.post(f"/v1/topics/{topic}/messages", json=body)
    assert first.status_code == 200, first.text
    assert all(r["message_id"] for r in first.json()["results"])

    retry = http.post(f"/v1/topics/{topic}/messages", json=body)
    assert retry.status_code == 200, retry.text
    assert all(r["duplicate"] is True for r in retry.json()["results"])
    assert [m["value"] for m in read_all(http, topic)] == list(range(5))


def test_sequence_id_without_producer_is_invalid(http: httpx.Client, topic: str) -> None:
    response = http.post(
        f"/v1/topics/{topic}/messages", json={"messages": [{"value": 1, "sequence_id": 1}]}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


def test_unknown_tenant_and_namespace_are_404_with_their_codes(http: httpx.Client) -> None:
    body = {"messages": [{"value": 1}]}
    no_tenant = http.post("/v1/topics/no-such-tenant/default/t/messages", json=body)
    assert no_tenant.status_code == 404
    assert no_tenant.json()["code"] == "tenant_not_found"
    no_namespace = http.post("/v1/topics/public/no-such-ns/t/messages", json=body)
    assert no_namespace.status_code == 404
    assert no_namespace.json()["code"] == "namespace_not_found"
    read = http.get("/v1/topics/public/no-such-ns/t/messages")
    assert read.status_code == 404
    assert read.json()["code"] == "namespace_not_found"


def test_topic_auto_creation_follows_the_namespace_policy(
    http: httpx.Client, admin: httpx.Client, namespace: str
) -> None:
    admin.post(
        f"/namespaces/{namespace}/autoTopicCreation", json={"allowAutoTopicCreation": False}
    ).raise_for_status()
    missing = f"{namespace}/never-created"
    publish = http.post(f"/v1/topics/{missing}/messages", json={"messages": [{"value": 1}]})
    assert publish.status_code == 404, publish.text
    assert publish.json()["code"] == "topic_not_found"
    assert http.get(f"/v1/topics/{missing}/messages").json()["code"] == "topic_not_found"

    admin.put(f"/persistent/{namespace}/created").raise_for_status()
    created = http.post(
        f"/v1/topics/{namespace}/created/messages", json={"messages": [{"value": 1}]}
    )
    assert created.status_code == 200, created.text


def test_idle_producers_are_closed(pulsar_cluster: PulsarCluster, admin: httpx.Client) -> None:
    topic = f"public/default/idle-{uuid.uuid4().hex[:8]}"
    gateway = start_gateway(pulsar_cluster, producer_idle_timeout_s="1")
    try:
        published = httpx.post(
            f"{gateway.url}/v1/topics/{topic}/messages",
            json={"messages": [{"value": 1}]},
            headers=bearer(),
        )
        assert published.status_code == 200
        assert len(admin.get(f"/persistent/{topic}/stats").json()["publishers"]) == 1
        deadline = time.monotonic() + 15
        while admin.get(f"/persistent/{topic}/stats").json()["publishers"]:
            assert time.monotonic() < deadline, "the idle producer was never closed"
            time.sleep(0.5)
    finally:
        stop_gateway(gateway)


def test_a_message_pulsar_rejects_fails_alone_with_207(
    pulsar_cluster: PulsarCluster, topic: str
) -> None:
    # Random bytes: LZ4 cannot shrink them under Pulsar's 5 MiB message limit.
    too_big = base64.b64encode(os.urandom(6 * 1024 * 1024)).decode()
    gateway = start_gateway(pulsar_cluster, max_body_bytes=str(16 * 1024 * 1024))
    try:
        response = httpx.post(
            f"{gateway.url}/v1/topics/{topic}/messages",
            json={"messages": [{"value": "small"}, {"data": too_big}, {"value": "also small"}]},
            headers=bearer(),
            timeout=60,
        )
        with gateway.client() as http:
            stored = read_all(http, topic)
    finally:
        stop_gateway(gateway)
    assert response.status_code == 207, response.text
    ok, failed, ok_again = response.json()["results"]
    assert ok["message_id"] and ok_again["message_id"]
    assert failed["error"]["code"] == "payload_too_large"
    assert [m["value"] for m in stored] == ["small", "also small"]
