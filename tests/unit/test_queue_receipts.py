import base64
import hashlib

import pytest

from broker_gateway.errors import InvalidReceipt
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.queues.receipts import Receipt, ReceiptSigner, cluster_of

TOPIC = TopicName("acme", "orders", "created")
RECEIPT = Receipt(replica=b"\x01" * 8, message_id=b"\x08\x10\x10\x20\x18\xff\x01")


def test_a_receipt_round_trips_on_any_replica_sharing_the_secret() -> None:
    text = ReceiptSigner(b"shared").sign(RECEIPT, TOPIC, "work")
    assert ReceiptSigner(b"shared").verify(text, TOPIC, "work") == RECEIPT


def test_a_receipt_is_bound_to_its_subscription_and_topic() -> None:
    text = ReceiptSigner(b"shared").sign(RECEIPT, TOPIC, "work")
    with pytest.raises(InvalidReceipt):
        ReceiptSigner(b"shared").verify(text, TOPIC, "other")
    with pytest.raises(InvalidReceipt):
        ReceiptSigner(b"shared").verify(text, TopicName("other", "orders", "created"), "work")


def test_a_receipt_signed_with_another_secret_is_invalid() -> None:
    text = ReceiptSigner(b"theirs").sign(RECEIPT, TOPIC, "work")
    with pytest.raises(InvalidReceipt):
        ReceiptSigner(b"ours").verify(text, TOPIC, "work")


@pytest.mark.parametrize("position", range(0, 20))
def test_flipping_any_bit_invalidates_a_receipt(position: int) -> None:
    signer = ReceiptSigner(b"shared")
    text = signer.sign(RECEIPT, TOPIC, "work")
    flipped = text[:position] + ("A" if text[position] != "A" else "B") + text[position + 1 :]
    with pytest.raises(InvalidReceipt):
        signer.verify(flipped, TOPIC, "work")


@pytest.mark.parametrize("garbage", ["", "AA", "not base64 !", "A" * 10])
def test_garbage_is_an_invalid_receipt(garbage: str) -> None:
    with pytest.raises(InvalidReceipt):
        ReceiptSigner(b"shared").verify(garbage, TOPIC, "work")


def test_a_receipt_names_the_cluster_it_was_leased_in_readable_before_verifying() -> None:
    leased_in_west = Receipt(b"\x02" * 8, b"\x08\x01", cluster="west")
    text = ReceiptSigner(b"shared").sign(leased_in_west, TOPIC, "work")
    assert cluster_of(text) == "west"
    assert ReceiptSigner(b"shared").verify(text, TOPIC, "work") == leased_in_west


def test_a_receipt_that_names_another_cluster_fails_verification() -> None:
    text = ReceiptSigner(b"shared").sign(Receipt(b"\x02" * 8, b"\x08\x01", "west"), TOPIC, "w")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    edited = raw[:2] + b"east" + raw[6:]
    forged = base64.urlsafe_b64encode(edited).rstrip(b"=").decode()
    assert cluster_of(forged) == "east"
    with pytest.raises(InvalidReceipt):
        ReceiptSigner(b"shared").verify(forged, TOPIC, "w")


def test_a_receipt_from_before_clusters_were_named_is_still_valid() -> None:
    key = b"shared"
    body = bytes([2]) + RECEIPT.replica + RECEIPT.message_id
    scope = f"\0{TOPIC.path}\0work".encode()
    mac = hashlib.blake2b(body + scope, key=key, digest_size=16).digest()
    text = base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()
    assert cluster_of(text) is None
    assert ReceiptSigner(key).verify(text, TOPIC, "work") == RECEIPT
