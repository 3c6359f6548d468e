"""Receipts: opaque, signed handles on a pulled message, valid on every gateway replica.

A receipt carries the message id and the replica that leased it, and is signed with the
secret all replicas share, bound to its topic and subscription. A receipt edited, forged,
or presented to another subscription fails verification.
"""

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from broker_gateway.errors import InvalidReceipt
from broker_gateway.pulsar.codecs import TopicName

_VERSION: Final = 2  # 1 was signed with HMAC-SHA256
_REPLICA_BYTES: Final = 8
_MAC_BYTES: Final = 16


@dataclass(frozen=True, slots=True)
class Receipt:
    replica: bytes  # the leasing replica's id, _REPLICA_BYTES long
    message_id: bytes  # pulsar MessageId.serialize()


class ReceiptSigner:
    def __init__(self, secret: bytes) -> None:
        # BLAKE2b takes keys of up to 64 bytes: a longer secret is hashed down to one.
        self._key = secret if len(secret) <= 64 else hashlib.blake2b(secret).digest()

    def sign(self, receipt: Receipt, topic: TopicName, subscription: str) -> str:
        body = bytes([_VERSION]) + receipt.replica + receipt.message_id
        mac = self._mac(body, topic, subscription)
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()

    def verify(self, text: str, topic: TopicName, subscription: str) -> Receipt:
        """Raises: InvalidReceipt."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError) as exc:
            raise InvalidReceipt("not base64url") from exc
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(body) <= 1 + _REPLICA_BYTES or body[0] != _VERSION:
            raise InvalidReceipt("malformed")
        if not hmac.compare_digest(mac, self._mac(body, topic, subscription)):
            raise InvalidReceipt("bad signature, or another subscription's receipt")
        return Receipt(body[1 : 1 + _REPLICA_BYTES], body[1 + _REPLICA_BYTES :])

    def _mac(self, body: bytes, topic: TopicName, subscription: str) -> bytes:
        # Keyed BLAKE2b is a MAC in one call: HMAC-SHA256 cost twice as much per message.
        scope = f"\0{topic.path}\0{subscription}".encode()
        return hashlib.blake2b(body + scope, key=self._key, digest_size=_MAC_BYTES).digest()
