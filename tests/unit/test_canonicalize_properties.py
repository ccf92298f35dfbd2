"""Property: whatever arrives, every record ends canonical, dead-lettered, or ignored with a reason."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.registry import SchemaRegistry
from state.changes import Canonicalizer, PartitionReader
from state.records import DeadLetter, Emit, Ignored, RawRecord
from tests.conftest import load_captured

CAPTURED = load_captured(transactions=True)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)


@st.composite
def corrupted(draw: st.DrawFn) -> RawRecord:
    raw = draw(st.sampled_from(CAPTURED))
    kind = draw(st.sampled_from(["as_is", "bytes", "field", "drop", "op", "topic", "json"]))
    if kind == "as_is" or raw.value is None:
        return raw
    if kind == "bytes":
        return dataclasses.replace(raw, value=draw(st.binary(max_size=40)))
    if kind == "json":
        return dataclasses.replace(raw, value=json.dumps(draw(
            st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                          max_size=3)))).encode())
    doc: dict[str, Any] = json.loads(raw.value)
    if kind == "field":
        row = doc.get("after") or doc.get("before")
        if row:
            row[draw(st.sampled_from(sorted(row)))] = draw(JSON_SCALARS)
    elif kind == "drop":
        doc.pop(draw(st.sampled_from(sorted(doc))))
    elif kind == "op":
        doc["op"] = draw(st.sampled_from(["c", "u", "d", "r", "t", "m", "x", None]))
    elif kind == "topic":
        return dataclasses.replace(raw, topic=draw(st.sampled_from(["erp.erp.nope", "wms.wms.debezium_signal"])))
    return dataclasses.replace(raw, value=json.dumps(doc).encode())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(corrupted(), max_size=60))
def test_every_record_is_accounted_for(canonicalizer: Canonicalizer, registry: SchemaRegistry,
                                       records: list[RawRecord]) -> None:
    reader = PartitionReader(canonicalizer, grace_ms=0)
    states: dict[str, Any] = {}
    for raw in records:
        part = f"{raw.topic}#{raw.partition}"
        states[part], outcomes = reader.apply(states.get(part), raw)  # never raises
        assert len(outcomes) == 1, raw  # one outcome per record: canonical, dead letter, or ignored
        assert all(isinstance(o, Emit | DeadLetter | Ignored) for o in outcomes)
        for o in outcomes:
            if isinstance(o, DeadLetter):
                assert o.reason and o.raw == raw  # original bytes, with a reason
            if isinstance(o, Ignored):
                assert o.reason in {"heartbeat", "tombstone", "ignored_table", "duplicate_or_stale",
                                    "logical_message", "transaction_metadata"}
            if isinstance(o, Emit):
                registry.encode(o.schema, o.value)  # whatever passed is valid for its Avro schema
                assert "__debezium_unavailable_value" not in json.dumps(o.value)
