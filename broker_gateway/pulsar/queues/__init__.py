"""Work queues on durable Pulsar subscriptions, pulled over HTTP.

No per-client state: a subscription's configuration lives in its Pulsar subscription
properties, and a receipt says everything another replica needs. A message's life:

    pulled ──► leased ──── ack ──────────────► acked (acknowledged to Pulsar: done)
      │          │
      │          ├── extend ──► leased (a later deadline)
      │          │
      │          └── nack, or deadline passed ──► redelivered by Pulsar (attempt + 1)
      │                                             │ but if that was its last allowed
      │                                             └─► dead-lettered (published to the
      │                                                 DLQ, then acked; redrive brings
      │                                                 it back as attempt 1)
      └── key_shared, its key leased ──► held here, in order, until the key is free

Guarantees, in code: a message is acknowledged to Pulsar only when a worker acks its
receipt (or after it is safely on the dead-letter topic); a replica that dies leaves
nothing acked that a worker did not ack, and Pulsar redelivers what it held.

Modules, one idea each:
- service       what routes call: consumers by subscription, and where a settle goes
- consumer      one replica's Pulsar consumers on a subscription, feeding the lease table
- leases        the lease table: leases, deadlines, busy keys, held messages (pure)
- receipts      signed handles on a leased message, valid on every replica
- control       typed commands between replicas (Ack, Nack, Extend, Close)
- dead_letters  dead-lettering and redrive
- config        the subscription's configuration, and the one way to set it
"""

from broker_gateway.pulsar.queues.config import SubscriptionConfig, configure
from broker_gateway.pulsar.queues.receipts import ReceiptSigner
from broker_gateway.pulsar.queues.service import Pulled, QueueService, ReceiptCode, Settled

__all__ = [
    "Pulled",
    "QueueService",
    "ReceiptCode",
    "ReceiptSigner",
    "Settled",
    "SubscriptionConfig",
    "configure",
]
