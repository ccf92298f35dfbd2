"""Channel definitions (spec section 8): what stock a sales channel sees and how its orders are governed.

One declarative file per channel (loaded by ``erpsync.channels``); adding a channel is adding a file.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class IntakePolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    allow_terms: bool = False
    allow_backorder: bool = False
    price_tolerance: Decimal = Decimal(0)
    intake_ttl_s: int = Field(default=900, gt=0)


class Outputs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kafka: bool = True
    redis: bool = True
    format: Literal["avro", "json"] = "avro"


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
