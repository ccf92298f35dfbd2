"""The manifest of a run: what it planned, submitted and did, the ground truth tests and reconcile check.

Pure bookkeeping, apart from the roles that fill it: the scenario records each planned order and
its intake fault; the storefronts count what was delivered; the ERP, WMS and back-office roles
record the stages reached, the downstream faults injected, the returns and the credit memos.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from erpsync.simulate.faults import DUPLICATE

STAGES = ("imported", "allocated", "shipped", "invoiced")  # "failed" ends an order instead


@dataclass
class Manifest:
    """What a run planned, submitted and did: the ground truth for tests and reconciliation.

    Order keys are ``<channel>:<external_order_id>`` as on ``commerce.orders``.
    """

    tag: str
    seed: int
    orders: dict[str, str | None] = field(default_factory=dict)  # key -> expected intake fault, None: clean
    submitted: int = 0  # messages delivered to commerce.orders (a duplicate counts twice)
    downstream: dict[str, str] = field(default_factory=dict)  # key -> discrepancy actually injected
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> what the fault changed
    erp_order_ids: dict[str, int] = field(default_factory=dict)
    stages: dict[str, str] = field(default_factory=dict)  # key -> furthest stage reached, or "failed"
    returns: dict[str, str] = field(default_factory=dict)  # key -> WMS rma_id
    credits: dict[str, int] = field(default_factory=dict)  # key -> ERP credit_memo_id
    drained: bool = False  # every expected order finished before the timeout

    def expected_rejections(self) -> dict[str, str]:
        """Order key -> the reason code the pipeline must reject it with."""
        return {k: f for k, f in self.orders.items() if f is not None and f != DUPLICATE}

    def expected_accepted(self) -> list[str]:
        return [k for k, f in self.orders.items() if f in (None, DUPLICATE)]

    def reached(self, stage: str) -> int:
        """How many orders reached a stage (or a later one)."""
        at = STAGES.index(stage)
        return sum(1 for s in self.stages.values() if s in STAGES and STAGES.index(s) >= at)

    def summary(self) -> dict[str, Any]:
        return {
            "orders": len(self.orders), "submitted": self.submitted,
            "by_channel": dict(sorted(Counter(k.split(":", 1)[0] for k in self.orders).items())),
            "intake_faults": dict(sorted(Counter(f for f in self.orders.values() if f).items())),
            "downstream_faults": dict(sorted(Counter(self.downstream.values()).items())),
            **{stage: self.reached(stage) for stage in STAGES},
            "failed": sum(1 for s in self.stages.values() if s == "failed"),
            "returns": len(self.returns), "credits": len(self.credits), "drained": self.drained,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2, default=str)
