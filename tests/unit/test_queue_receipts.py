import pytest

from broker_gateway.errors import InvalidReceipt
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.queues.receipts import Receipt, ReceiptSigner

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
