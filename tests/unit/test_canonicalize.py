"""Canonicalization over real Debezium envelopes captured from the reference ERP and WMS."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from schemas.registry import SchemaRegistry
from state.changes import TOAST_PLACEHOLDER, Canonicalizer, PartitionReader, source_position
from state.records import DeadLetter, Emit, Ignored, Progress, RawRecord
from tests.conftest import envelope


def run(canonicalizer: Canonicalizer, records: list[RawRecord]) -> list[Any]:
    """Each partition through its own reader, as the flow runs them."""
    reader = PartitionReader(canonicalizer, grace_ms=0)
    states: dict[str, Any] = {}
    out: list[Any] = []
    for raw in records:
        part = f"{raw.topic}#{raw.partition}"
        states[part], outcomes = reader.apply(states.get(part), raw)
        out.extend(outcomes)
    return out


def with_value(raw: RawRecord, doc: Any) -> RawRecord:
    return dataclasses.replace(raw, value=json.dumps(doc).encode() if not isinstance(doc, bytes) else doc)


def first(records: list[RawRecord], topic: str, op: str) -> RawRecord:
    return next(r for r in records if r.topic == topic and r.value and envelope(r)["op"] == op)


def test_every_mapped_table_and_op_is_captured(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    seen = {(r.topic, envelope(r)["op"] if r.value else "tombstone") for r in captured
            if not r.topic.startswith("__")}
    for topic in canonicalizer.mappings.topics:
        assert (topic, "c") in seen, topic
    for op in ("u", "d", "tombstone", "r"):
        assert any(o == op for _, o in seen), op


def test_captured_records_all_land(captured: list[RawRecord], canonicalizer: Canonicalizer,
                                   registry: SchemaRegistry) -> None:
    out = run(canonicalizer, captured)
    dead = [o for o in out if isinstance(o, DeadLetter)]
    assert dead == []
    ignored = sorted(o.reason for o in out if isinstance(o, Ignored))
    assert set(ignored) == {"heartbeat", "tombstone"}
    emits = [o for o in out if isinstance(o, Emit)]
    assert len(emits) + len(ignored) == len(captured)
    for e in emits:  # every value fits its Avro schema
        name, decoded = registry.decode(registry.encode(e.schema, e.value))
        assert name == e.schema and decoded["event_id"] == e.value["event_id"]


def test_update_decimals_and_timestamps(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    update = first(captured, "erp.erp.customers", "u")
    [emit] = run(canonicalizer, [first(captured, "erp.erp.customers", "c"), update])[1:]
    assert emit.topic == "canonical.customer"
    assert emit.value["op"] == "upsert"
    assert emit.value["credit_limit"] == "7500.25"  # numeric(14,2) as an exact string
    assert emit.value["credit_hold"] is True
    assert emit.value["updated_at"] == 1795773600000000  # 2026-11-27T10:00:00Z in µs
    assert emit.value["source"]["system"] == "erp" and emit.value["source"]["snapshot"] is False
    assert emit.key == json.dumps([envelope(update)["after"]["customer_id"]])


def test_mariadb_datetime_and_decimal(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    [emit] = run(canonicalizer, [first(captured, "wms.wms.shipments", "u")])
    assert emit.value["freight_cost"] == "7.50"
    assert emit.value["shipped_at"] == 1795854600000001  # DATETIME(6) 2026-11-28 08:30:00.000001
    assert emit.value["status"] == "dispatched"


def test_date_columns_become_days(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    [emit] = run(canonicalizer, [first(captured, "erp.erp.price_list_lines", "c")])
    assert emit.value["valid_from"] == 20454  # 2026-01-01
    assert emit.value["unit_price"] in ("12.5000", "3.9900")


def test_delete_carries_the_row_it_removed(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    delete = first(captured, "erp.erp.price_list_lines", "d")
    [emit] = run(canonicalizer, [delete])
    assert emit.value["op"] == "delete"
    assert emit.value["unit_price"] == envelope(delete)["before"]["unit_price"]  # REPLICA IDENTITY FULL
    assert emit.value["sku"] == envelope(delete)["before"]["sku"]


def test_delete_without_a_full_image_carries_only_the_key(captured: list[RawRecord], registry: SchemaRegistry,
                                                         tmp_path: Any) -> None:
    """A source logging only key columns: the delete says which row went, nothing made up."""
    from flows.canonicalize import make_canonicalizer  # noqa: PLC0415
    from schemas.mapping import MAPPINGS_DIR  # noqa: PLC0415

    for path in MAPPINGS_DIR.glob("*.toml"):
        (tmp_path / path.name).write_text(path.read_text().replace("full_before_image = true", ""))
    delete = first(captured, "erp.erp.price_list_lines", "d")
    doc = envelope(delete)
    doc["before"] = {k: (v if k in ("price_list_id", "sku", "valid_from") else None) for k, v in doc["before"].items()}
    [emit] = run(make_canonicalizer(registry, tmp_path), [with_value(delete, doc)])
    assert emit.value["op"] == "delete" and emit.value["unit_price"] is None
    assert emit.value["sku"] == envelope(delete)["before"]["sku"]


def test_tombstone_is_counted_not_published(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    tomb = next(r for r in captured if r.value is None)
    assert run(canonicalizer, [tomb]) == [Ignored("tombstone", tomb.topic, tomb.partition, tomb.offset)]


def test_toast_placeholder_takes_the_before_image(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    """REPLICA IDENTITY FULL: the old row, TOASTed values included, comes with the update."""
    create, update = first(captured, "erp.erp.order_intake", "c"), first(captured, "erp.erp.order_intake", "u")
    doc = envelope(update)
    assert doc["before"]["payload"] == envelope(create)["after"]["payload"]  # captured with FULL
    doc["after"]["payload"] = TOAST_PLACEHOLDER  # what a source without FULL sends for an unchanged value
    out = run(canonicalizer, [create, with_value(update, doc)])
    assert out[1].value["payload"] == envelope(create)["after"]["payload"]
    assert out[1].value["status"] == "imported"
    assert TOAST_PLACEHOLDER not in json.dumps([o.value for o in out])


def test_toast_placeholder_without_a_before_image_goes_to_dlq(captured: list[RawRecord],
                                                             canonicalizer: Canonicalizer) -> None:
    create, update = first(captured, "erp.erp.order_intake", "c"), first(captured, "erp.erp.order_intake", "u")
    doc = envelope(update)
    doc["after"]["payload"], doc["before"] = TOAST_PLACEHOLDER, None
    dead = run(canonicalizer, [create, with_value(update, doc)])[1]
    assert isinstance(dead, DeadLetter) and "TOAST" in dead.reason and "REPLICA IDENTITY FULL" in dead.reason


def test_duplicate_redelivery_changes_nothing(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    erp = [r for r in captured if r.topic.startswith("erp.")]
    once = run(canonicalizer, erp)
    twice = run(canonicalizer, erp + erp)  # a connector restart re-sends what it already sent
    assert [o for o in twice if isinstance(o, Emit)] == [o for o in once if isinstance(o, Emit)]
    assert sum(isinstance(o, Ignored) and o.reason == "duplicate_or_stale" for o in twice) == \
        sum(isinstance(o, Emit) for o in once)


def test_snapshot_read_is_an_upsert(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    [emit] = run(canonicalizer, [first(captured, "wms.wms.inventory_balances", "r")])
    assert emit.value["op"] == "upsert" and emit.value["source"]["snapshot"] is True


def test_stale_event_after_newer_one_is_ignored(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    """A partition never goes back: a change older than one already applied is stale (a redelivery)."""
    balances = [r for r in captured if r.topic == "wms.wms.inventory_balances" and r.value
                and envelope(r)["source"]["snapshot"] == "false"]
    newest_first = list(reversed(balances))
    out = run(canonicalizer, newest_first)
    emitted_positions: dict[str, list[str]] = {}
    for o in out:
        if isinstance(o, Emit):
            emitted_positions.setdefault(o.key, []).append(o.value["source"]["position"])
    assert emitted_positions and all(len(p) == 1 for p in emitted_positions.values())  # only the newest
    stale = sum(isinstance(o, Ignored) and o.reason == "duplicate_or_stale" for o in out)
    assert stale == len(balances) - len(emitted_positions)


@pytest.mark.parametrize(("column", "value", "reason"), [
    ("on_hand", -5, "negative quantity"),
    ("on_hand", "ten", "expected an integer"),
    ("sku", None, "missing required value"),
    ("sku", "SKU-NUL\x00-1", "control character"),  # MariaDB takes it; its key JSON-escapes it
    ("location", "DC\nEAST", "control character"),
])
def test_invalid_rows_go_to_dlq(captured: list[RawRecord], canonicalizer: Canonicalizer,
                                column: str, value: Any, reason: str) -> None:
    raw = first(captured, "wms.wms.inventory_balances", "c")
    doc = envelope(raw)
    doc["after"][column] = value
    [dead] = run(canonicalizer, [with_value(raw, doc)])
    assert isinstance(dead, DeadLetter) and reason in dead.reason and column in dead.reason
    assert dead.raw.value == with_value(raw, doc).value  # original bytes kept


def test_unknown_enum_and_precise_decimal(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    raw = first(captured, "erp.erp.items", "c")
    doc = envelope(raw)
    doc["after"]["status"] = "obsolete"
    [dead] = run(canonicalizer, [with_value(raw, doc)])
    assert isinstance(dead, DeadLetter) and "unknown value 'obsolete'" in dead.reason
    raw = first(captured, "erp.erp.customers", "c")
    doc = envelope(raw)
    doc["after"]["credit_limit"] = "AeJA"  # what decimal.handling.mode=precise sends without a schema
    [dead] = run(canonicalizer, [with_value(raw, doc)])
    assert isinstance(dead, DeadLetter) and "base64" in dead.reason


def test_numeric_decimals_are_accepted(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    raw = first(captured, "erp.erp.customers", "c")
    doc = envelope(raw)
    doc["after"]["credit_limit"] = 1234.5
    [emit] = run(canonicalizer, [with_value(raw, doc)])
    assert emit.value["credit_limit"] == "1234.50"


def test_malformed_and_unmapped(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    raw = first(captured, "erp.erp.items", "c")
    [bad] = run(canonicalizer, [with_value(raw, b"{not json")])
    assert isinstance(bad, DeadLetter) and "malformed JSON" in bad.reason
    [unmapped] = run(canonicalizer, [dataclasses.replace(raw, topic="erp.erp.new_table")])
    assert isinstance(unmapped, DeadLetter) and "no mapping" in unmapped.reason
    [ignored] = run(canonicalizer, [dataclasses.replace(raw, topic="erp.erpsync_cdc.debezium_signal")])
    assert isinstance(ignored, Ignored) and ignored.reason == "ignored_table"


def test_non_owner_change_is_a_sor_violation(captured: list[RawRecord], registry: SchemaRegistry) -> None:
    from flows.canonicalize import make_canonicalizer  # noqa: PLC0415

    canon = make_canonicalizer(registry)
    items = canon.mappings.by_topic["erp.erp.items"]
    rogue = dataclasses.replace(items, system="wms")  # a WMS table mapped onto the ERP-owned item
    canon.mappings.by_topic["wms.erp.items"] = rogue
    raw = dataclasses.replace(first(captured, "erp.erp.items", "c"), topic="wms.erp.items")
    [exc] = run(canon, [raw])
    assert isinstance(exc, Emit) and exc.topic == "sync.exceptions"
    assert exc.value["kind"] == "sor_violation" and exc.value["entity"] == "item"


def test_truncate_is_a_dead_letter_saying_what_to_do(captured: list[RawRecord],
                                                    canonicalizer: Canonicalizer) -> None:
    """A TRUNCATE names no rows: nothing downstream can be told which went; the DLQ says to re-snapshot."""
    last = [r for r in captured if r.topic == "erp.erp.customers" and r.value][-1]
    doc = envelope(last)
    truncate = {"op": "t", "before": None, "after": None,
                "source": {**doc["source"], "sequence": json.dumps(["99999999999", "99999999999"])}}
    [dead] = run(canonicalizer, [dataclasses.replace(last, value=json.dumps(truncate).encode())])
    assert isinstance(dead, DeadLetter) and "TRUNCATE" in dead.reason and "snapshot" in dead.reason


def test_positions_are_totally_ordered_per_source(captured: list[RawRecord]) -> None:
    for system in ("erp", "wms"):
        ordered = [r for r in captured if r.topic.startswith(f"{system}.") and r.value]
        by_topic: dict[str, list[str]] = {}
        for r in ordered:
            pos = source_position(envelope(r)["source"])
            assert pos is not None
            by_topic.setdefault(r.topic, []).append(pos)
        for topic, positions in by_topic.items():  # Kafka order within a partition = source order
            assert positions == sorted(positions), topic
    assert source_position({"connector": "postgresql", "sequence": '["10","9"]', "lsn": 9}) < \
        source_position({"connector": "postgresql", "sequence": '["10","16"]', "lsn": 16})  # type: ignore[operator]
    assert source_position({"connector": "mariadb", "file": "binlog.000009", "pos": 99999, "row": 0}) < \
        source_position({"connector": "mariadb", "file": "binlog.000010", "pos": 4, "row": 0})  # type: ignore[operator]


def test_string_decimal_without_point_is_rejected(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    raw = first(captured, "erp.erp.customers", "c")
    doc = envelope(raw)
    doc["after"]["credit_limit"] = "1234"  # base64 of b"\xd7m\xf8": digits that are not a decimal string
    [dead] = run(canonicalizer, [with_value(raw, doc)])
    assert isinstance(dead, DeadLetter) and "base64" in dead.reason


def test_timestamps_before_1970(captured: list[RawRecord], canonicalizer: Canonicalizer) -> None:
    raw = first(captured, "erp.erp.customers", "c")
    doc = envelope(raw)
    doc["after"]["updated_at"] = "1969-12-31T23:59:59.500000Z"
    [emit] = run(canonicalizer, [with_value(raw, doc)])
    assert emit.value["updated_at"] == -500_000


def test_a_record_slower_than_the_grace_keeps_its_partitions_promise(captured: list[RawRecord],
                                                                     canonicalizer: Canonicalizer) -> None:
    """Read to its end, a partition promised the wall clock minus the grace; a record produced before
    that but delivered after must not land behind the promise (the stages would see it late)."""
    reader = PartitionReader(canonicalizer, grace_ms=100)
    raw = dataclasses.replace(first(captured, "wms.wms.inventory_balances", "r"), timestamp_ms=5_000)
    channel = raw.read_from
    state, marks = reader.apply(None, Progress(channel, 10_000))
    assert [m.ms for m in marks] == [9_900]
    state, [emit] = reader.apply(state, raw)
    assert isinstance(emit, Emit) and emit.time == 9_901 and state.delayed == 1
    assert reader.flush(state, channel) == []  # nothing after 9_900 promised: it is at 9_901
    doc = envelope(raw)
    doc["source"]["pos"] = int(doc["source"]["pos"]) + 1000  # the row's next change
    state, [later] = reader.apply(state, dataclasses.replace(with_value(raw, doc), offset=raw.offset + 1,
                                                             timestamp_ms=20_000))
    assert isinstance(later, Emit) and later.time == 20_000 and state.delayed == 1
