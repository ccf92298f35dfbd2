"""Money as the ERP keeps it: amounts in whole cents, rounded half up.

Shared by the planned orders (``scenario``), the ERP import (``erp_import``), the WMS's freight
split (``wms``) and the back office (``finance``), so that every role rounds the same way.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def split_cents(total: Decimal, parts: int) -> list[Decimal]:
    """Total split into `parts` amounts of whole cents that add up to it exactly (first takes the rest)."""
    cents = int(money(total) * 100)
    share, rest = divmod(cents, parts)
    return [Decimal(share + (rest if i == 0 else 0)) / 100 for i in range(parts)]
