import pytest

from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.subscriptions import SubscriptionConfig

TOPIC = TopicName("acme", "orders", "created")


def test_configuration_round_trips_through_subscription_properties() -> None:
    config = SubscriptionConfig(
        type="key_shared",
        initial_position="earliest",
        ack_deadline_ms=5000,
        max_deliveries=4,
        dead_letter_topic="acme/orders/dead",
        retry_backoff_ms=(250, 8000),
    )
    properties = config.to_properties()
    assert all(k.startswith("broker-gateway.") for k in properties)
    assert SubscriptionConfig.from_properties(properties) == config


def test_properties_of_others_are_ignored_and_defaults_fill_in() -> None:
    assert SubscriptionConfig.from_properties({"team": "billing"}) == SubscriptionConfig()


def test_an_unknown_type_is_rejected() -> None:
    with pytest.raises(ValueError):
        SubscriptionConfig.from_properties({"broker-gateway.type": "exclusive"})


def test_dead_letter_topic_defaults_to_topic_subscription_dlq() -> None:
    assert SubscriptionConfig().dead_letters(TOPIC, "work").path == "acme/orders/created-work-DLQ"
    custom = SubscriptionConfig(dead_letter_topic="acme/ops/dead")
    assert custom.dead_letters(TOPIC, "work").path == "acme/ops/dead"


def test_backoff_doubles_per_delivery_within_its_bounds() -> None:
    config = SubscriptionConfig(retry_backoff_ms=(1000, 5000))
    assert [config.backoff_ms(n) for n in range(1, 6)] == [1000, 2000, 4000, 5000, 5000]
