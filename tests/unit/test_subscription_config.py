import pytest

from broker_gateway.errors import InvalidRequest
from broker_gateway.pulsar.codecs import TopicName
from broker_gateway.pulsar.queues.config import SubscriptionConfig

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


def test_a_plan_compares_everything_but_where_a_new_subscription_starts() -> None:
    config = SubscriptionConfig(initial_position="earliest", max_deliveries=3)
    assert config.fields() == {
        "type": "shared",
        "ack_deadline_ms": 30_000,
        "max_deliveries": 3,
        "dead_letter_topic": None,
        "retry_backoff_ms": (1000, 60_000),
    }
    # What a plan read from a live subscription is a valid configuration again.
    assert SubscriptionConfig.model_validate(config.fields()).max_deliveries == 3


def test_a_dead_letter_topic_in_another_tenant_is_refused() -> None:
    SubscriptionConfig(dead_letter_topic="acme/ops/dead").check_for(TOPIC)
    with pytest.raises(InvalidRequest, match="topic's tenant"):
        SubscriptionConfig(dead_letter_topic="other/ops/dead").check_for(TOPIC)
