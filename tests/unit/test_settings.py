import pytest
from pydantic import HttpUrl, ValidationError

from broker_gateway.settings import Cluster, Settings


def test_defaults_point_at_the_local_pulsar(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GATEWAY_CLUSTERS", "GATEWAY_PORT", "GATEWAY_HOST"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.data_cluster.service_url == "pulsar://127.0.0.1:6650"
    assert str(settings.data_cluster.admin_url) == "http://127.0.0.1:8080/"
    # make run starts east and west, which the example manifests in topics/ use.
    assert [c.name for c in settings.clusters] == ["east", "west"]


def test_environment_overrides_with_gateway_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9001")
    monkeypatch.setenv(
        "GATEWAY_CLUSTERS",
        '[{"name": "east", "service_url": "pulsar://e:6650", "admin_url": "http://e:8080"},'
        ' {"name": "west", "service_url": "pulsar://w:6650", "admin_url": "http://w:8080"}]',
    )
    settings = Settings()
    assert settings.port == 9001
    assert [c.name for c in settings.clusters] == ["east", "west"]
    assert settings.data_cluster.name == "east"


def test_a_cluster_needs_a_pulsar_service_url() -> None:
    with pytest.raises(ValidationError):
        Cluster(name="x", service_url="http://x:6650", admin_url=HttpUrl("http://x:8080"))


def test_settings_are_not_created_at_import_time() -> None:
    import broker_gateway.app as app_module
    import broker_gateway.settings as settings_module

    assert not any(isinstance(v, Settings) for v in vars(settings_module).values())
    assert not any(isinstance(v, Settings) for v in vars(app_module).values())


def test_cors_origins_are_exact_origins_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", "https://App.example, http://localhost:3000,")
    assert Settings().cors_origins == ["https://app.example", "http://localhost:3000"]


@pytest.mark.parametrize(
    "origin", ["*", "https://*.example", "https://app.example/", "app.example", "null"]
)
def test_a_cors_origin_that_is_not_exact_is_refused(
    monkeypatch: pytest.MonkeyPatch, origin: str
) -> None:
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", origin)
    with pytest.raises(ValidationError, match="not an origin"):
        Settings()


def test_cors_is_off_by_default() -> None:
    assert Settings().cors_origins == []
