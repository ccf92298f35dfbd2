"""The faults a run injects, and how an amount is made wrong.

Intake faults (spec section 6 reason codes, plus a duplicate submission) are decided when an order
is planned (``scenario``) and sent as they are. Downstream faults (spec section 9 kinds, plus a
failed ERP import) are planned with the order too, and applied by the role that would cause them
in real life: the ERP import (``import_failed``), the WMS (``short_shipment``), the back office
(invoice and freight discrepancies, a credit memo wrong or missing). The ``Manifest`` records each
one actually injected. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

DUPLICATE = "duplicate"  # sent twice; accepted once, not a rejection
# Intake faults (spec section 6 reason codes, plus duplicate) and their relative weights.
INTAKE_FAULTS: Mapping[str, int] = {
    "price_mismatch": 3, DUPLICATE: 3, "missing_tax_jurisdiction": 2, "unknown_customer": 2,
    "credit_hold": 2, "insufficient_stock": 2, "payment_not_approved": 1, "inactive_sku": 1,
}
# Discrepancies injected after intake (spec section 9 kinds, plus a failed ERP import).
DOWNSTREAM_FAULTS: Mapping[str, int] = {
    "short_shipment": 3, "invoice_discrepancy": 2, "freight_discrepancy": 2, "credit_pending": 2,
    "credit_discrepancy": 1,
}
IMPORT_FAILED = "import_failed"


def off_by(amount: Decimal, delta: Decimal) -> Decimal:
    """An amount made wrong by delta, and still positive (a delta that would cross zero is added instead)."""
    return amount + delta if amount + delta > 0 else amount + abs(delta)
