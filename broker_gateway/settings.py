"""The gateway's configuration: one class, read from `GATEWAY_*` environment variables."""

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, HttpUrl, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# An origin as browsers send it: scheme, host and port, nothing else.
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


class Cluster(BaseModel):
    """A Pulsar cluster the gateway talks to."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    service_url: str = Field(description="Binary protocol URL, e.g. pulsar://127.0.0.1:6650")
    admin_url: HttpUrl = Field(description="Admin REST URL, e.g. http://127.0.0.1:8080")
    token: SecretStr | None = Field(
        default=None,
        description="JWT the gateway presents to this cluster when Pulsar runs with token "
        "authentication; also handed to peers' replicators when manifests register it.",
    )
    listener_name: str | None = Field(
        default=None,
        description="The broker listener (Pulsar's advertisedListeners) to connect through, "
        "when brokers advertise other addresses to other networks.",
    )

    @field_validator("service_url")
    @classmethod
    def _pulsar_scheme(cls, value: str) -> str:
        if not value.startswith(("pulsar://", "pulsar+ssl://")):
            raise ValueError("service_url must start with pulsar:// or pulsar+ssl://")
        return value


def _local_clusters() -> list[Cluster]:
    """The two clusters `make run` starts (see local/pulsar)."""
    return [
        Cluster(
            name="east",
            service_url="pulsar://127.0.0.1:6650",
            admin_url=HttpUrl("http://127.0.0.1:8080"),
        ),
        Cluster(
            name="west",
            service_url="pulsar://127.0.0.1:6660",
            admin_url=HttpUrl("http://127.0.0.1:8090"),
        ),
    ]


class Settings(BaseSettings):
    """Every setting has a default that works with `make run`'s local Pulsar."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "info"
    # `json`: one JSON object per line (time, level, logger, message, and the request's
    # fields on access lines). `text`: for people.
    log_format: Literal["text", "json"] = "text"
    # One line per request: method, route template (never the query string: it may hold a
    # stream token), status, duration, request id, tenant.
    access_log: bool = True

    # Web pages on these origins (exact `scheme://host[:port]`, comma-separated; never a
    # wildcard) may call the API from a browser. None by default: CORS is off.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How long browsers may cache a preflight's answer.
    cors_max_age_s: int = Field(default=600, ge=0, le=86_400)
    # A live-stream token (POST .../stream-tokens, for EventSource) is valid this long.
    stream_token_ttl_s: int = Field(default=300, ge=10, le=3600)
    # Worker processes serving the port. Each is a replica of its own (Pulsar client,
    # producers, consumers, per-replica limits); they share receipts and /metrics.
    workers: int = Field(default=1, ge=1)
    # On SIGTERM (or SIGINT) /readyz answers 503 at once; after shutdown_delay_s, so load
    # balancers notice, the gateway stops accepting connections, ends live streams with a
    # `reconnect` event and long polls with what they have, lets other requests finish and
    # exits 0 within shutdown_grace_s. An orchestrator's grace period must be longer (the
    # chart gives it 5 s more).
    shutdown_delay_s: float = Field(default=1.0, ge=0)
    shutdown_grace_s: int = Field(default=30, ge=1)
    # An idle client connection is kept this long. Longer than the idle timeout of the load
    # balancers and clients in front (60 s is common): when the gateway closes first, a
    # request sent on the connection at that moment gets no answer at all.
    keep_alive_s: int = Field(default=75, ge=1)

    # The first cluster is home: it carries the data plane (publish, read, queues) while
    # it is up; manifests may use any of them, and /readyz checks them all. Manifests name
    # clusters, never URLs. Give every replica the same list, in the same order.
    # As JSON: GATEWAY_CLUSTERS='[{"name": ..., "service_url": ..., "admin_url": ...}]'.
    clusters: list[Cluster] = Field(default_factory=_local_clusters, min_length=1)
    # Region failover, for topics whose namespace replicates to other configured clusters:
    # an operation waits at most failover_detect_s on home before its health is checked
    # (readiness_timeout_s); found down, the operation goes to a peer. Home is checked
    # every failover_probe_s and takes traffic back after failover_healthy_for_s of
    # passing checks (twice as long each time it flaps, up to 5 minutes).
    failover_detect_s: float = Field(default=2.0, gt=0)
    failover_probe_s: float = Field(default=1.0, gt=0)
    failover_healthy_for_s: float = Field(default=10.0, ge=0)
    pulsar_operation_timeout_s: float = Field(default=10.0, gt=0)
    pulsar_connect_timeout_s: float = Field(default=5.0, gt=0)
    # A message not persisted this long after it was sent fails (504): across a broker
    # restart it waits, and is sent again on the new connection, up to this long.
    pulsar_send_timeout_s: float = Field(default=15.0, gt=0)
    pulsar_io_threads: int = Field(default=1, ge=1)
    # How long a request may wait on the broker before 503/504, and what Retry-After says.
    broker_retry_after_s: int = Field(default=5, ge=1)
    readiness_timeout_s: float = Field(default=2.0, gt=0)

    # Authentication is on unless switched off explicitly (local development only). Tokens
    # are JWTs signed with the HS256 secret or a key in the PEM file (RS256, ES256), or API
    # keys listed by their SHA-256 in the keys file.
    auth_enabled: bool = True
    auth_hs256_secret: SecretStr | None = Field(default=None, min_length=32)
    auth_public_keys_file: Path | None = None
    auth_api_keys_file: Path | None = None
    auth_audience: str = "broker-gateway"
    auth_issuer: str | None = None
    auth_leeway_s: int = Field(default=30, ge=0, le=300)

    # Per tenant, per replica: requests and published bytes per second (0: no limit), with
    # bursts of up to `*_burst`. Over a limit: 429 with Retry-After.
    tenant_requests_per_s: float = Field(default=500.0, ge=0)
    tenant_request_burst: int = Field(default=1000, ge=1)
    tenant_bytes_per_s: float = Field(default=32 * 1024 * 1024, ge=0)
    tenant_byte_burst: int = Field(default=64 * 1024 * 1024, ge=1)
    # Live streams one principal may hold open at once, per replica.
    max_streams_per_principal: int = Field(default=16, ge=1)

    # Requests one replica holds at once (live streams aside); beyond it: 503 `overloaded`.
    max_in_flight: int = Field(default=512, ge=1)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    max_messages_per_request: int = Field(default=1000, ge=1)
    max_read_limit: int = Field(default=1000, ge=1)
    max_wait_ms: int = Field(default=30_000, ge=0)

    producer_idle_timeout_s: float = Field(default=300.0, gt=0)
    # A named producer (`producer` in a publish) belongs to one replica while open.
    named_producer_idle_timeout_s: float = Field(default=10.0, gt=0)

    # Idempotency-Key answers live in this topic ({tenant}/{namespace}/{topic}) for this long.
    idempotency_topic: str = Field(
        default="public/default/broker-gateway-idempotency",
        pattern=r"^[A-Za-z0-9_.=:-]+/[A-Za-z0-9_.=:-]+/[A-Za-z0-9_.=:-]+$",
    )
    idempotency_ttl_s: int = Field(default=86_400, ge=60)

    # A topic's schema (its contract, checked on publish) is fetched once per topic this
    # often at most; an apply through this replica is taken up at once.
    schema_refresh_s: float = Field(default=5.0, gt=0)

    # A paged read keeps its reader this long for the page after it (a request whose
    # `position` is that page's `next`), at most this many per replica: the next page then
    # costs no reader to open and no seek. 0 readers: every page opens its own.
    read_reader_idle_s: float = Field(default=10.0, gt=0)
    read_readers_kept: int = Field(default=64, ge=0)

    # Live streams send a heartbeat after this long without a message.
    stream_heartbeat_s: float = Field(default=15.0, gt=0)

    # Work queues. Receipts are signed with this secret: give every replica the same one.
    # Unset, each `serve` makes its own (shared by its workers), and its receipts work on
    # it alone.
    receipt_secret: SecretStr | None = None
    max_pull_messages: int = Field(default=1000, ge=1)
    # After this long without a pull, a replica hands back messages that reached it for no
    # waiting pull (it replaces its consumer), so workers on other replicas get them.
    queue_handoff_s: float = Field(default=1.0, gt=0)
    # A replica closes its consumers on a subscription unused this long (nothing leased).
    # Pulsar keeps delivery counts while a subscription has a consumer on some replica.
    queue_consumer_idle_timeout_s: float = Field(default=300.0, gt=0)
    # A subscription's configuration, changed by HTTP, a manifest or Pulsar's own admin,
    # reaches every replica's consumers within this long (a PUT through a replica: at once).
    queue_config_refresh_s: float = Field(default=5.0, gt=0)
    # Replicas forward acks, nacks and extensions to the one holding the lease over this topic.
    control_topic: str = "persistent://public/default/broker-gateway-control"

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port], no path, no wildcard"
                )
        return [o.lower() for o in origins]

    @property
    def data_cluster(self) -> Cluster:
        return self.clusters[0]
