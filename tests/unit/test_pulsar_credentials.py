"""The gateway's credentials towards Pulsar, where no broker is needed: they never show,
and a broker's refusal is an error to fix, not to retry (and a lost connection, one to
retry). Against a real Pulsar with token
authentication: tests/integration/test_pulsar_auth.py and test_manifests.py."""

import _pulsar
import pulsar
import pulsar.asyncio

from broker_gateway.errors import BrokerError, BrokerUnavailable
from broker_gateway.pulsar.errors import translate
from broker_gateway.settings import Cluster

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJicm9rZXItZ2F0ZXdheSJ9.sig"


def test_a_token_never_shows_in_the_settings_repr() -> None:
    cluster = Cluster.model_validate(
        {
            "name": "east",
            "service_url": "pulsar://127.0.0.1:6650",
            "admin_url": "http://127.0.0.1:8080",
            "token": TOKEN,
        }
    )
    assert TOKEN not in repr(cluster)
    assert TOKEN not in str(cluster.model_dump())


def test_a_client_the_broker_does_not_authorize_is_a_broker_error_not_a_retry() -> None:
    error = translate(pulsar.AuthorizationError("refused"))
    assert type(error) is BrokerError
    assert not error.retryable and error.retry_after_s is None
    assert "refused the gateway's credentials" in error.detail


def test_a_lost_connection_the_client_reports_without_a_name_is_unavailable() -> None:
    # The C++ client's ResultDisconnected (46), which its Python enum does not name: a read
    # pending when the broker went away.
    error = translate(pulsar.asyncio.PulsarException(_pulsar.Result(46)))
    assert type(error) is BrokerUnavailable
    assert error.detail == "Pulsar: Disconnected"
