"""A reconciliation finding, and what each kind of finding means.

Every comparison (``compare``, ``discrepancies``) yields ``Finding`` values, the report groups them
by kind with ``KIND_HELP``, and the run stores them in ``sync.reconciliation_findings``: the one
type every stage shares, kept apart so that none of them depends on another for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KIND_HELP = {
    "ats_mismatch_redis": "Redis ats:<channel> differs from the ATS recomputed from the sources",
    "missing_in_redis": "a SKU of the item master or WMS stock has no value in Redis ats:<channel>",
    "ats_mismatch_ops_db": "sync.availability.ats differs from the recomputed ATS",
    "missing_in_ops_db": "a SKU of the item master or WMS stock has no sync.availability row",
    "ats_mismatch_topic": "the latest availability.<channel> record differs from the recomputed ATS",
    "order_status_mismatch": "sync.order_status differs from the status/lines recomputed from ERP and WMS",
    "order_status_mismatch_topic": "the latest order-status.<channel> record differs from the recomputed one",
    "missing_order_status": "an ERP order of a configured channel has no sync.order_status row",
    "order_missing_in_erp": "channels were told an order was accepted, but neither erp.order_intake nor "
                            "erp.sales_orders has it",
    "invoice_discrepancy": "the order's invoices do not add up to the order total",
    "freight_discrepancy": "invoiced freight differs from the WMS shipments' freight cost",
    "credit_discrepancy": "credit memo amount for a return differs from returned qty x line unit price",
    "credit_pending": "a WMS return has no credit memo (yet)",
    "short_shipment": "the ERP says shipped/invoiced/closed but the WMS dispatched less than ordered "
                      "(the spec's status_mismatch)",
    "overship": "the WMS dispatched more than ordered on a line",
    "status_mismatch": "the ERP and the WMS disagree about the order otherwise",
    "channel_mismatch": "the ATS a push channel last acknowledged differs from the recomputed ATS "
                        "(absent: never acknowledged, read as 0)",
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One difference. expected: what the systems of record say; actual: what was told (or the other side)."""

    kind: str
    entity: str  # "availability" or "order"
    business_key: str  # "<channel>/<sku>" or "<channel>/<external_order_id>", as sync.exceptions keys them
    expected: Any
    actual: Any
    detail: dict[str, Any] = field(default_factory=dict)
