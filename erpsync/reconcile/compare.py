"""Comparing: the recomputed truth against what channels were told, one finding per difference.

Inventory against Redis ``ats:<channel>`` and ``sync.availability``; push channels against what they
acknowledged; order status against ``sync.order_status``; with ``--topics``, both against the latest
records of the channel topics. Pure: the readers' results come in as plain data (``facts``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from erpsync.reconcile.discrepancies import order_discrepancies
from erpsync.reconcile.facts import ErpOrder, TopicValues
from erpsync.reconcile.findings import Finding
from erpsync.reconcile.recompute import RECEIVED, Ats, expected_status
from state.channels import Channel

STATUS_FIELDS = ("status", "order_id", "lines", "carriers", "tracking_numbers")


@dataclass(frozen=True)
class InventoryResult:
    findings: list[Finding]
    pairs: int  # SKU x channel pairs counted for accuracy
    accurate: int


def compare_inventory(expected: Mapping[tuple[str, str], Ats], redis_values: Mapping[str, Mapping[str, str]],
                      ops_rows: Mapping[tuple[str, str], Mapping[str, Any]], known: set[str],
                      redis_channels: set[str]) -> InventoryResult:
    """Recomputed ATS against Redis (channel -> sku -> raw value) and sync.availability rows.

    Accuracy counts only channels in redis_channels (those whose outputs include Redis); see
    ACCURACY_DEFINITION. A known SKU absent from Redis is a finding even when reading 0 is right.
    """
    findings: list[Finding] = []
    pairs = accurate = 0
    for (channel, sku), exp in sorted(expected.items()):
        key = f"{channel}/{sku}"
        row = ops_rows.get((channel, sku))
        detail = {"recomputed": asdict(exp), "ops_db": None if row is None else dict(row)}
        if channel in redis_channels:
            pairs += 1
            raw = redis_values.get(channel, {}).get(sku)
            told: int | str | None = None if raw is None else _int_or_raw(raw)
            if (0 if told is None else told) == exp.ats:
                accurate += 1
            if told is None and sku in known:
                findings.append(Finding("missing_in_redis", "availability", key, exp.ats, None, detail))
            elif told is not None and told != exp.ats:
                findings.append(Finding("ats_mismatch_redis", "availability", key, exp.ats, told, detail))
        if row is None:
            if sku in known:
                findings.append(Finding("missing_in_ops_db", "availability", key, exp.ats, None, detail))
        elif row["ats"] != exp.ats:
            findings.append(Finding("ats_mismatch_ops_db", "availability", key, exp.ats, row["ats"], detail))
    return InventoryResult(findings, pairs, accurate)


def compare_push(expected: Mapping[tuple[str, str], Ats], acked: Mapping[tuple[str, str], int],
                 push_channels: set[str]) -> list[Finding]:
    """channel_mismatch: what each push channel last acknowledged (sync.channel_deliveries) vs the recomputed ATS."""
    findings = []
    for (channel, sku), exp in sorted(expected.items()):
        if channel not in push_channels:
            continue
        told = acked.get((channel, sku))
        if (0 if told is None else told) != exp.ats:
            findings.append(Finding("channel_mismatch", "availability", f"{channel}/{sku}", exp.ats, told,
                                    {"recomputed": asdict(exp), "acknowledged_ats": told}))
    return findings


def _int_or_raw(raw: str) -> int | str:
    try:
        return int(raw)
    except ValueError:
        return raw  # not what the read contract promises: never equal to an ATS


def status_differences(expected: Mapping[str, Any], told: Mapping[str, Any]) -> list[str]:
    """The fields of STATUS_FIELDS in which what was told differs from what was expected."""
    def norm(name: str, value: Any) -> Any:
        if name == "lines":
            return sorted(({k: line[k] for k in ("line_no", "sku", "ordered", "allocated", "shipped")}
                           for line in value or []), key=lambda line: line["line_no"])
        return sorted(value or []) if name in ("carriers", "tracking_numbers") else value
    return [name for name in STATUS_FIELDS if norm(name, expected.get(name)) != norm(name, told.get(name))]


@dataclass(frozen=True)
class OrderResult:
    findings: list[Finding]
    keys: set[str]  # every channel order in scope: ERP orders, intakes, published statuses
    expected: dict[str, dict[str, Any]]  # key -> status channels should see (configured channels only)
    invoices: int
    invoices_with_discrepancy: int
    rejected: set[str]


def compare_orders(orders: Sequence[ErpOrder], intake_keys: set[str], published: Mapping[str, Mapping[str, Any]],
                   channel_ids: set[str], now_ms: int, credit_sla_ms: int) -> OrderResult:
    """ERP orders (and intakes) against sync.order_status rows (key -> row), plus each order's discrepancies."""
    findings: list[Finding] = []
    expected: dict[str, dict[str, Any]] = {}
    invoices = invoices_bad = 0
    for order in sorted(orders, key=lambda o: o.key):
        found = order_discrepancies(order, now_ms, credit_sla_ms)
        findings.extend(found)
        invoices += len(order.invoices)
        if any(f.kind == "invoice_discrepancy" for f in found):
            invoices_bad += len(order.invoices)
        if order.channel in channel_ids:
            expected[order.key] = expected_status(order)
    in_erp = {o.key for o in orders}
    for key in sorted(intake_keys - in_erp):
        if key.split("/", 1)[0] in channel_ids:
            expected[key] = dict(RECEIVED)
    for key, exp in sorted(expected.items()):
        row = published.get(key)
        if row is None:
            findings.append(Finding("missing_order_status", "order", key, exp["status"], None,
                                    {"order_id": exp["order_id"]}))
            continue
        fields = status_differences(exp, row)
        if fields:
            findings.append(Finding("order_status_mismatch", "order", key, {f: exp[f] for f in fields},
                                    {f: row.get(f) for f in fields},
                                    {"order_id": exp["order_id"], "fields": fields,
                                     "last_fact_ms": row.get("last_fact_ms"), "written_at": row.get("written_at")}))
    rejected = {k for k, row in published.items() if row["status"] == "rejected"}
    for key, row in sorted(published.items()):
        if key not in in_erp and key not in intake_keys and key not in rejected:
            findings.append(Finding("order_missing_in_erp", "order", key, None, row["status"],
                                    {"written_at": row.get("written_at")}))
    keys = in_erp | intake_keys | set(published)
    return OrderResult(findings, keys, expected, invoices, invoices_bad, rejected)


def compare_topics(latest: TopicValues, ats: Mapping[tuple[str, str], Ats],
                   statuses: Mapping[str, dict[str, Any]], channels: Sequence[Channel]) -> list[Finding]:
    """The latest availability.<channel> / order-status.<channel> records against the recomputed values."""
    findings = []
    for c in channels:
        for (channel, sku), exp in sorted(ats.items()):
            if channel == c.id and (c.topic, sku) in latest:
                value = latest[(c.topic, sku)]
                told = None if value is None else value["ats"]
                if told != exp.ats:
                    findings.append(Finding("ats_mismatch_topic", "availability", f"{channel}/{sku}", exp.ats,
                                            told, {"topic": c.topic, "recomputed": asdict(exp)}))
        for key, exp_status in sorted(statuses.items()):
            channel, _, ext = key.partition("/")
            if channel == c.id and (c.order_status_topic, ext) in latest:
                record = latest[(c.order_status_topic, ext)] or {}
                fields = status_differences(exp_status, record)
                if fields:
                    findings.append(Finding("order_status_mismatch_topic", "order", key,
                                            {f: exp_status[f] for f in fields}, {f: record.get(f) for f in fields},
                                            {"topic": c.order_status_topic, "fields": fields}))
    return findings
