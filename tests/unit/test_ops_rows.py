"""Rows the ops database sinks write: what PostgreSQL cannot store is made storable, not dropped."""

from __future__ import annotations

import json

from connectors.ops_db import exception_row


def test_nul_in_an_exception_is_shown_escaped() -> None:
    row = exception_row({"id": "x", "kind": "dead_letter", "severity": "error", "entity": "t",
                         "business_key": "t/0/\x001", "reason": "bad key \x00", "source": {"topic": "t\x00"},
                         "detail": json.dumps({"key": "k\x00"}), "first_seen_ms": 1, "last_seen_ms": 1,
                         "state": "open"})
    assert row["business_key"] == "t/0/\\01" and row["reason"] == "bad key \\0"
    assert row["detail"].obj == {"key": "k\\0"} and row["source"].obj == {"topic": "t\\0"}
