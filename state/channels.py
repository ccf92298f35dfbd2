"""Channel definitions (spec section 8): what stock a sales channel sees and how its orders are governed.

One declarative file per channel (loaded by ``erpsync.channels``); adding a channel is adding a file.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class IntakePolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    allow_terms: bool = False
    allow_backorder: bool = False
    price_tolerance: Decimal = Decimal(0)
    intake_ttl_s: int = Field(default=900, gt=0)


class PushAuth(BaseModel):
    """Credentials of a push output, read from the environment by variable name (never from the file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["none", "bearer", "basic", "header"] = "none"
    token_env: str | None = None  # bearer, header: the variable holding the token
    user_env: str | None = None  # basic
    password_env: str | None = None  # basic
    header: str = "X-Auth-Token"  # header: the header carrying the token (BigCommerce's by default)

    @model_validator(mode="after")
    def _names_given(self) -> PushAuth:
        needed = {"none": (), "bearer": ("token_env",), "header": ("token_env",),
                  "basic": ("user_env", "password_env")}[self.type]
        missing = [name for name in needed if not getattr(self, name)]
        if missing:
            raise ValueError(f"auth type {self.type} needs {', '.join(missing)} (an environment variable name)")
        return self


class Push(BaseModel):
    """An HTTP push output (spec section 12): what a commerce platform's API is sent, and how fast.

    format: "webhook" (generic JSON, availability and order status) or "bigcommerce" (the BigCommerce
    batch absolute inventory adjustment, availability only). Delivery is governed by
    connectors.http_channels.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    url: str = Field(pattern=r"^https?://")
    sends: tuple[Literal["availability", "order_status"], ...] = ("availability",)
    format: Literal["webhook", "bigcommerce"] = "webhook"
    auth: PushAuth = PushAuth()
    batch_size: int = Field(default=50, ge=1, le=1000)
    rate_per_s: float = Field(default=2.0, gt=0)  # the platform's request limit
    burst: int = Field(default=1, ge=1)  # requests the platform allows at once beyond the rate
    concurrency: int = Field(default=8, ge=1, le=64)  # requests in flight at once (>= rate x platform latency)
    timeout_s: float = Field(default=10.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1)  # consecutive failures that open the circuit breaker
    breaker_reset_s: float = Field(default=30.0, gt=0)  # open -> half-open (one probe request)
    backoff_max_s: float = Field(default=30.0, gt=0)
    location_id: int = 1  # bigcommerce: the inventory location the channel's ATS is set on

    @model_validator(mode="after")
    def _shape_fits(self) -> Push:
        if not self.sends:
            raise ValueError("push: sends must name availability, order_status or both")
        if self.format == "bigcommerce" and "order_status" in self.sends:
            raise ValueError("push: the bigcommerce format carries availability only; use webhook for order status")
        return self


class Outputs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kafka: bool = True
    redis: bool = True
    format: Literal["avro", "json"] = "avro"
    push: Push | None = None


class Channel(BaseModel):
    """A sales channel: what stock it sees and how its orders are governed (spec section 8)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    locations: tuple[str, ...] | None = None  # None: every location
    share: float = Field(default=1.0, gt=0, le=1)
    include_in_transit: bool = False
    min_publish_interval_ms: int = Field(default=250, ge=0)
    intake: IntakePolicy = IntakePolicy()
    outputs: Outputs = Outputs()

    @field_validator("locations")
    @classmethod
    def _not_empty(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and not v:
            raise ValueError("locations: leave it out for every location, or name at least one")
        return v

    @property
    def share_exact(self) -> Fraction:
        """The share as an exact fraction: floor(network × 0.29) must not lose a unit to float error."""
        return Fraction(str(self.share))

    @property
    def topic(self) -> str:
        return f"availability.{self.id}"

    @property
    def order_status_topic(self) -> str:
        return f"order-status.{self.id}"

    def sees(self, location: str) -> bool:
        return self.locations is None or location in self.locations
