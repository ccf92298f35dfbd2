"""One immutable settings object, read from the environment (prefix ``ERPSYNC_``) at start-up.

Nested sections use ``__`` as the delimiter, e.g. ``ERPSYNC_KAFKA__PORT=29092`` or
``ERPSYNC_ERP__PASSWORD=...``. Passwords are ``SecretStr`` so they never reach a log line.
The local stack (``erpsync stack``) serves exactly the endpoints configured here; pointing erpsync
at an existing Kafka/Connect/ERP/WMS is a matter of changing them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from erpsync.logs import kafka_client_error, kafka_client_logger
from state.order_status import Slas

SASL_MECHANISM = "SCRAM-SHA-512"

_FROZEN = ConfigDict(frozen=True)


class KafkaSettings(BaseModel):
    """The Kafka cluster and erpsync's SASL/SCRAM login to it (TLS too when a CA file is given)."""

    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = 19092
    controller_port: int = 19093
    # Confluent wire format through this registry's Confluent-compatible API; None (set it empty)
    # for Avro single-object encoding. Default (see Settings): the local stack's registry.
    schema_registry_url: str | None = None
    user: str = "erpsync"
    password: SecretStr = SecretStr("erpsync-kafka-local")
    # Partitions of the topics erpsync or Connect creates (raw change topics, canonical and channel
    # topics): a cluster of pipeline processes spreads them over its workers. Topics that exist keep
    # theirs. Debezium's transaction topics always have one (a transaction's BEGIN and END differ in key).
    partitions: int = Field(default=6, ge=1)
    # PEM files. With a CA, clients speak SASL_SSL and verify the broker with it; the local stack's
    # broker then serves SASL_SSL with the certificate and key (the key unencrypted, PKCS#8).
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None

    @field_validator("schema_registry_url")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def security_protocol(self) -> Literal["SASL_PLAINTEXT", "SASL_SSL"]:
        return "SASL_SSL" if self.ssl_ca_location else "SASL_PLAINTEXT"

    def client_config(self) -> dict[str, Any]:
        """Connection settings of every confluent-kafka client (producer, consumer, admin) of erpsync.

        Bootstrap servers, SASL/SCRAM-SHA-512 with erpsync's login, TLS when configured, and the
        client logs routed through one rate-limited logger (a broker outage makes librdkafka log
        hundreds of lines a second). Add client-specific settings with ``|``.
        """
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "sasl.mechanism": SASL_MECHANISM,
            "sasl.username": self.user,
            "sasl.password": self.password.get_secret_value(),
            "logger": kafka_client_logger(),
            "error_cb": functools.partial(kafka_client_error, user=self.user),
        }
        if self.ssl_ca_location:
            config["ssl.ca.location"] = str(self.ssl_ca_location)
        return config


class ConnectSettings(BaseModel):
    """Kafka Connect: its REST API (HTTP basic auth) and the worker's own Kafka login."""

    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = 18083
    user: str = "erpsync-admin"
    password: SecretStr = SecretStr("erpsync-connect-local")
    kafka_user: str = "erpsync-connect"
    kafka_password: SecretStr = SecretStr("erpsync-connect-kafka-local")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class DatabaseSettings(BaseModel):
    """A source or sink database: an admin login (local stack, tests) and the CDC capture login."""

    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = 15432
    dbname: str = "erp"
    user: str = "postgres"
    password: SecretStr = SecretStr("erpsync-local")
    capture_user: str = "erpsync_capture"
    capture_password: SecretStr = SecretStr("erpsync-capture-local")


class ErpDatabaseSettings(DatabaseSettings):
    """The ERP: also the login that writes governed orders into its order import table."""

    intake_user: str = "erpsync_intake"
    intake_password: SecretStr = SecretStr("erpsync-intake-local")


class OpsDatabaseSettings(DatabaseSettings):
    """erpsync's own database, in a PostgreSQL cluster of its own: the ERP's replication rights do not reach it."""

    port: int = 15433
    dbname: str = "erpsync_ops"


class WmsDatabaseSettings(DatabaseSettings):
    port: int = 13306
    dbname: str = "wms"
    user: str = "root"


class RegistrySettings(BaseModel):
    """The local stack's schema registry (Apicurio Registry), stored in the stack's PostgreSQL."""

    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = 18081
    dbname: str = "erpsync_registry"
    user: str = "erpsync_registry"
    password: SecretStr = SecretStr("erpsync-registry-local")
    heap: str = "256m"

    @property
    def url(self) -> str:
        """The Confluent-compatible API (what Confluent clients, kcat -r and Kafka UIs take)."""
        return f"http://{self.host}:{self.port}/apis/ccompat/v7"


class RedisSettings(BaseModel):
    """Redis with ACL users: the pipeline's (writes its keys) and the storefronts' (reads ats:/price: keys)."""

    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = 16379
    user: str = "erpsync"
    password: SecretStr = SecretStr("erpsync-redis-local")
    reader_user: str = "storefront"
    reader_password: SecretStr = SecretStr("erpsync-storefront-local")


class StackSettings(BaseModel):
    """Where the local stack keeps its data, logs and JVM jars (git-ignored)."""

    model_config = _FROZEN
    home: Path = Field(default_factory=lambda: Path.cwd() / ".erpsync")
    kafka_heap: str = "512m"
    connect_heap: str = "768m"
    start_timeout_s: float = 120.0


class FlowSettings(BaseModel):
    """How `erpsync run` executes the dataflows."""

    model_config = _FROZEN
    workers: int = 1
    # A cluster of pipeline processes (bytewax): this process's id and every process's host:port, in
    # id order (ERPSYNC_FLOWS__ADDRESSES='["flows-0:2101","flows-1:2101"]'); none: one process.
    process_id: int = Field(default=0, ge=0)
    addresses: tuple[str, ...] = ()
    # Bytewax snapshots state and input offsets at this interval; a crash replays at most this
    # much input (sinks are fenced, so the replay is harmless). Kafka outputs are committed in one
    # transaction per interval: `read_committed` consumers see them at most this late.
    snapshot_interval_s: float = 2.0
    # Default: <stack home>/recovery.
    recovery_dir: Path | None = None
    # Source-table mappings (TOML); default: the packaged schemas/mappings.
    mappings_dir: Path | None = None
    # Channel definitions, one TOML file per channel; default: the packaged erpsync/config/channels.
    channels_dir: Path | None = None
    # The WMS locations a channel may name in `locations` (a name not listed is an error, not an
    # empty channel). Environment: a JSON list, e.g. ERPSYNC_FLOWS__LOCATIONS='["DC-EAST","DC-WEST"]'.
    locations: tuple[str, ...] = ("DC-EAST", "DC-WEST", "DC-CENTRAL")
    # Order SLAs on event time (spec section 9): accepted -> allocated, ERP/WMS disagreement grace,
    # return received -> credit memo.
    allocation_sla_s: float = 4 * 3600
    status_grace_s: float = 15 * 60
    credit_sla_s: float = 72 * 3600
    unknown_sku_grace_s: float = 60  # stock or orders for a SKU not (yet) in the item master
    # Event time: a partition read to its end is promised up to the clock minus this grace (records
    # in flight between the producer's timestamp and the read); sequencing shards per stage (fixed for
    # a recovery directory); the business time zone of channel orders' dates (price validity).
    idle_grace_ms: int = Field(default=100, ge=0)
    shards: int = Field(default=4, ge=1)
    business_timezone: str = "UTC"
    # A sink that has waited this long for its store raises a sink_unavailable exception.
    sink_unavailable_after_s: float = 10.0
    # Kafka outputs: parts, each one transactional producer and the only writer of its topic
    # partitions (fixed for a recovery directory, like shards).
    output_parts: int = Field(default=2, ge=1)

    def slas(self) -> Slas:
        return Slas(int(self.allocation_sla_s * 1000), int(self.status_grace_s * 1000), int(self.credit_sla_s * 1000),
                    int(self.unknown_sku_grace_s * 1000))


class CliSettings(BaseModel):
    """How the command line reports long work."""

    model_config = _FROZEN
    # Seconds between progress log lines when stderr is not a terminal (a terminal gets a live bar).
    progress_interval_s: float = Field(default=10.0, gt=0)


class TelemetrySettings(BaseModel):
    """OpenTelemetry export (erpsync.telemetry): none, console or OTLP over HTTP."""

    model_config = _FROZEN
    exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4318"
    interval_s: float = 30.0  # metric export interval
    trace_sample: float = Field(default=0.01, ge=0, le=1)  # share of canonical events traced


class PushSettings(BaseModel):
    """HTTP push delivery to channels (connectors.http_channels); per-channel limits are in the channel files."""

    model_config = _FROZEN
    # Re-derive what each push channel is owed from the ops database this often: a safety net for
    # values handed over before a crash, and how a replayed channel_rejected exception is picked up.
    rescan_s: float = Field(default=30.0, gt=0)
    status_interval_s: float = Field(default=2.0, gt=0)  # sync.channel_status refresh


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ERPSYNC_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    connect: ConnectSettings = ConnectSettings()
    erp: ErpDatabaseSettings = ErpDatabaseSettings()
    ops: OpsDatabaseSettings = OpsDatabaseSettings()
    wms: WmsDatabaseSettings = WmsDatabaseSettings()
    redis: RedisSettings = RedisSettings()
    registry: RegistrySettings = RegistrySettings()
    stack: StackSettings = StackSettings()
    flows: FlowSettings = FlowSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    cli: CliSettings = CliSettings()
    push: PushSettings = PushSettings()

    @model_validator(mode="before")
    @classmethod
    def _registry_url_defaults_to_the_local_registry(cls, data: Any) -> Any:
        """Unset ERPSYNC_KAFKA__SCHEMA_REGISTRY_URL means the local stack's registry, like every default.

        Set it to your registry, or to an empty value for single-object encoding.
        """
        if not isinstance(data, dict):
            return data
        kafka = data.get("kafka")
        if isinstance(kafka, BaseModel):
            return data  # built in code: taken as given
        kafka = dict(kafka or {})
        if "schema_registry_url" not in kafka:
            registry = data.get("registry")
            registry = registry if isinstance(registry, RegistrySettings) else RegistrySettings(**(registry or {}))
            kafka["schema_registry_url"] = registry.url
        return {**data, "kafka": kafka}

    @property
    def recovery_dir(self) -> Path:
        return self.flows.recovery_dir or self.stack.home / "recovery"


def load_settings() -> Settings:
    """Build the settings once, at start-up, from the environment."""
    return Settings()
