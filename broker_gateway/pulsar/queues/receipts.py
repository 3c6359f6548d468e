"""Receipts: opaque, signed handles on a pulled message, valid on every gateway replica.

A receipt carries the cluster the message was leased in, the replica that leased it and
the message id, and is signed with the secret all replicas share, bound to its topic and
subscription. A receipt edited, forged, or presented to another subscription fails
verification. The cluster is readable unverified (`cluster_of`), to route a settle to the
cluster that verifies it: an ack goes where its message came from, even after a failover.
"""

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from broker_gateway.errors import InvalidReceipt
from broker_gateway.pulsar.codecs import TopicName

_VERSION: Final = 3
_NO_CLUSTER_VERSION: Final = 2  # the home cluster's, from before clusters were named
_REPLICA_BYTES: Final = 8
_MAC_BYTES: Final = 16


@dataclass(frozen=True, slots=True)
class Receipt:
    replica: bytes  # the leasing replica's id, _REPLICA_BYTES long
    message_id: bytes  # pulsar MessageId.serialize()
    cluster: str = ""  # where it was leased


def _decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidReceipt("not base64url") from exc


def cluster_of(text: str) -> str | None:
    """The cluster a receipt says it was leased in, unverified; None if it names none."""
    try:
        raw = _decode(text)
    except InvalidReceipt:
        return None
    if len(raw) < 2 or raw[0] != _VERSION or len(raw) < 2 + raw[1]:
        return None
    try:
        return raw[2 : 2 + raw[1]].decode()
    except UnicodeDecodeError:
        return None


class ReceiptSigner:
    def __init__(self, secret: bytes) -> None:
        # BLAKE2b takes keys of up to 64 bytes: a longer secret is hashed down to one.
        self._key = secret if len(secret) <= 64 else hashlib.blake2b(secret).digest()

    def sign(self, receipt: Receipt, topic: TopicName, subscription: str) -> str:
        cluster = receipt.cluster.encode()
        body = bytes([_VERSION, len(cluster)]) + cluster + receipt.replica + receipt.message_id
        mac = self._mac(body, topic, subscription)
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()

    def verify(self, text: str, topic: TopicName, subscription: str) -> Receipt:
        """Raises: InvalidReceipt."""
        raw = _decode(text)
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(body) < 2 or body[0] not in (_VERSION, _NO_CLUSTER_VERSION):
            raise InvalidReceipt("malformed")
        replica_at = 2 + body[1] if body[0] == _VERSION else 1
        if len(body) <= replica_at + _REPLICA_BYTES:
            raise InvalidReceipt("malformed")
        if not hmac.compare_digest(mac, self._mac(body, topic, subscription)):
            raise InvalidReceipt("bad signature, or another subscription's receipt")
        return Receipt(
            body[replica_at : replica_at + _REPLICA_BYTES],
            body[replica_at + _REPLICA_BYTES :],
            body[2:replica_at].decode(errors="replace"),
        )

    def _mac(self, body: bytes, topic: TopicName, subscription: str) -> bytes:
        # Keyed BLAKE2b is a MAC in one call: HMAC-SHA256 cost twice as much per message.
        scope = f"\0{topic.path}\0{subscription}".encode()
        return hashlib.blake2b(body + scope, key=self._key, digest_size=_MAC_BYTES).digest()
