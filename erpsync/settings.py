"""One immutable settings object, read from the environment (prefix ``ERPSYNC_``) at start-up.

Nested sections use ``__`` as the delimiter, e.g. ``ERPSYNC_KAFKA__PORT=29092`` or
``ERPSYNC_ERP__PASSWORD=...``. Passwords are ``SecretStr`` so they never reach a log line.
The local stack (``erpsync stack``) serves exactly the endpoints configured here; pointing erpsync
at an existing Kafka/Connect/ERP/WMS is a matter of changing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from state.sla import Slas

_FROZEN = ConfigDict(frozen=True)


class KafkaSettings(BaseModel):
    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = 19092
    controller_port: int = 19093
    schema_registry_url: str | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"


class ConnectSettings(BaseModel):
    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = 18083

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
    dbname: str = "erpsync_ops"


class WmsDatabaseSettings(DatabaseSettings):
    port: int = 13306
    dbname: str = "wms"
    user: str = "root"


class RedisSettings(BaseModel):
    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = 16379


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
    # Bytewax snapshots state and input offsets at this interval; a crash replays at most this
    # much input (sinks are fenced, so the replay is harmless).
    snapshot_interval_s: float = 5.0
    # Default: <stack home>/recovery.
    recovery_dir: Path | None = None
    # Source-table mappings (TOML); default: the packaged schemas/mappings.
    mappings_dir: Path | None = None
    # Channel definitions (TOML, one per channel); default: the packaged erpsync/config/channels.
    channels_dir: Path | None = None
    # Order SLAs on event time (spec section 9): accepted -> allocated, ERP/WMS disagreement grace,
    # return received -> credit memo.
    allocation_sla_s: float = 4 * 3600
    status_grace_s: float = 15 * 60
    credit_sla_s: float = 72 * 3600
    unknown_sku_grace_s: float = 60  # stock or orders for a SKU not (yet) in the item master

    def slas(self) -> Slas:
        return Slas(int(self.allocation_sla_s * 1000), int(self.status_grace_s * 1000), int(self.credit_sla_s * 1000),
                    int(self.unknown_sku_grace_s * 1000))


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
    stack: StackSettings = StackSettings()
    flows: FlowSettings = FlowSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    push: PushSettings = PushSettings()

    @property
    def recovery_dir(self) -> Path:
        return self.flows.recovery_dir or self.stack.home / "recovery"


def load_settings() -> Settings:
    """Build the settings once, at start-up, from the environment."""
    return Settings()
