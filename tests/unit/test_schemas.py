"""The Avro contract and its single-object / Confluent serde (evolution rules: test_schema_evolution.py)."""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import struct
import sys
import types
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.mapping import load_mappings
from schemas.mapping_check import reference_catalog
from schemas.registry import (
    SCHEMA_DIR,
    SchemaRegistry,
    make_value_deserializer,
    make_value_serializer,
)

ROOT = Path(__file__).resolve().parents[2]
UTC = dt.UTC


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


# ------------------------------------------------------------------ the contract itself

OUTPUTS = {f"io.erpsync.{name}" for name in ("Availability", "OrderStatus", "SyncException", "AcceptedOrder")}

def _entities() -> dict[str, tuple[str, str, tuple[str, ...], str]]:
    """entity -> (record name, owner, key, source table), from the Avro contract and the packaged mappings.

    Derived, not listed: adding a source table and its entity (schemas/mappings/README.md) extends
    every test below without editing them.
    """
    registry = SchemaRegistry.load()
    entities = registry.entities()
    mappings = load_mappings({n: e.key for n, e in entities.items()}).by_topic.values()
    tables = {m.entity: m.table for m in mappings if m.system == entities[m.entity].owner}
    return {n: (e.name.rpartition(".")[2], e.owner, e.key, tables[n]) for n, e in sorted(entities.items())}


ENTITIES = _entities()

# Spec section 4: the system of record of each entity it names.
SPEC_OWNERS = {
    "customer": "erp", "item": "erp", "price": "erp", "order": "erp", "order_line": "erp", "invoice": "erp",
    "credit_memo": "erp", "inventory_position": "wms", "allocation": "wms", "shipment": "wms",
    "shipment_line": "wms", "return": "wms",
}
CATALOG = reference_catalog(sorted((ROOT / "reference").glob("*.sql")))


def test_every_schema_parses_and_stands_alone(registry: SchemaRegistry) -> None:
    expected = OUTPUTS | {f"io.erpsync.canonical.{name}" for name, *_ in ENTITIES.values()}
    assert set(registry.names()) == expected
    for name in expected:
        schema = registry.schema(name)
        # The canonical form is self-contained (common types inlined): it parses with no other schema.
        standalone = fastavro.parse_schema(json.loads(schema.canonical_form), named_schemas={})
        assert standalone["name"] == name


def test_shared_types_are_defined_once_where_first_used(tmp_path: Path) -> None:
    shutil.copy(SCHEMA_DIR / "common.avsc", tmp_path)
    (tmp_path / "move.avsc").write_text(json.dumps({
        "type": "record", "name": "Move", "namespace": "io.erpsync", "doc": "Uses Source twice.",
        "fields": [
            {"name": "source", "type": "io.erpsync.Source", "doc": "full name"},
            {"name": "previous", "type": ["null", "Source"], "default": None, "doc": "same namespace"},
        ],
    }))
    registry = SchemaRegistry.load(tmp_path)
    schema = registry.schema("io.erpsync.Move")
    assert schema.definition["fields"][0]["type"]["name"] == "Source"  # inlined at first use
    assert schema.definition["fields"][1]["type"] == ["null", "Source"]  # then referenced
    record = {"source": source("erp", "erp.items"), "previous": source("erp", "erp.items", 41)}
    assert registry.decode(registry.encode("io.erpsync.Move", record)) == ("io.erpsync.Move", record)


def test_every_field_and_type_is_documented() -> None:
    def walk(node: Any, where: str) -> list[str]:
        missing: list[str] = []
        if isinstance(node, list):
            for branch in node:
                missing += walk(branch, where)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "enum") and not node.get("doc"):
                missing.append(f"{where}: type {node['name']}")
            for f in node.get("fields", []):
                if not f.get("doc"):
                    missing.append(f"{where}: field {f['name']}")
                missing += walk(f["type"], where)
            for child in ("items", "values"):
                missing += walk(node.get(child), where)
        return missing

    files = sorted(SCHEMA_DIR.glob("*.avsc"))
    assert len(files) == len(ENTITIES) + len(OUTPUTS) + 1  # + common.avsc
    missing = [m for path in files for m in walk(json.loads(path.read_text()), path.name)]
    assert missing == []


@pytest.mark.parametrize("entity", sorted(ENTITIES))
def test_entity_metadata_matches_the_spec(registry: SchemaRegistry, entity: str) -> None:
    name, owner, key, _ = ENTITIES[entity]
    meta = registry.entity(entity)
    assert meta.name == f"io.erpsync.canonical.{name}"
    assert meta.owner == owner
    assert meta.key == key
    assert meta.topic == "canonical." + entity.replace("_", "-")
    assert list(meta.fields)[:3] == ["event_id", "op", "source"]
    for field, avro_type in list(meta.fields.items())[3:]:
        if field in key:
            assert not isinstance(avro_type, list), f"{field} is a key field and must not be nullable"
        else:
            assert isinstance(avro_type, list) and avro_type[0] == "null", f"{field} must be nullable"
    fields = registry.schema(meta.name).definition["fields"]
    defaults = {fd["name"]: fd.get("default", "<none>") for fd in fields[3:] if fd["name"] not in key}
    assert defaults and set(defaults.values()) == {None}
    assert meta.owner == SPEC_OWNERS.get(entity, meta.owner)
    assert set(key) == set(CATALOG.tables[ENTITIES[entity][3]].primary_key)  # Debezium keys rows by it


def test_every_entity_the_spec_names_exists(registry: SchemaRegistry) -> None:
    assert set(SPEC_OWNERS) <= set(registry.entities())


TS = {"type": "long", "logicalType": "timestamp-micros"}
DATE = {"type": "int", "logicalType": "date"}


_AVRO_OF_SQL = {"string": "string", "json": "string", "decimal": "string", "int32": "int", "int64": "long",
                "bool": "boolean", "date": DATE, "timestamptz": TS, "timestamp": TS}


@pytest.mark.parametrize("entity", sorted(ENTITIES))
def test_entity_fields_are_the_reference_columns(registry: SchemaRegistry, entity: str) -> None:
    meta = registry.entity(entity)
    columns = CATALOG.tables[ENTITIES[entity][3]].columns
    assert list(meta.fields)[3:] == list(columns)
    docs = {f["name"]: f["doc"] for f in registry.schema(meta.name).definition["fields"]}
    for name, column in columns.items():
        avro_type = meta.fields[name]
        value_type = avro_type[1] if isinstance(avro_type, list) else avro_type
        assert value_type == _AVRO_OF_SQL[column.family], name
        if column.family == "decimal":
            assert f"scale {column.scale}" in docs[name], f"{name}: the doc must state the decimal scale"


# ------------------------------------------------------------------ realistic records, every schema

T0 = dt.datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC)


def source(system: str, table: str, offset: int = 42) -> dict[str, Any]:
    return {
        "system": system, "table": table, "position": f"{offset:020d}", "tx_id": "771",
        "commit_ts_ms": 1_795_000_000_000, "snapshot": False, "topic": f"{system}.{table}",
        "partition": 0, "offset": offset,
    }


def envelope(entity: str) -> dict[str, Any]:
    _, owner, _, table = ENTITIES[entity]
    return {"event_id": f"{entity}-e1", "op": "upsert", "source": source(owner, table)}


UPSERTS: dict[str, dict[str, Any]] = {
    "customer": {"customer_id": "C-000123", "account_no": "A-123", "name": "Acme Supply",
                 "price_list_id": "PL-STD", "credit_limit": "25000.00", "credit_hold": False,
                 "tax_jurisdiction": None, "updated_at": T0},
    "item": {"sku": "SKU-1", "description": "Widget", "uom": "EA", "safety_stock": 5, "status": "active",
             "updated_at": T0},
    "price": {"price_list_id": "PL-STD", "sku": "SKU-1", "unit_price": "12.5000",
              "valid_from": dt.date(2026, 1, 1), "valid_to": None},
    "order": {"order_id": 900001, "channel": "marketplace", "external_order_id": "MP-1001",
              "customer_id": "C-000123", "status": "entered", "currency": "USD", "fulfillment_method": "SHIP",
              "tax_jurisdiction": "US-TX-AUSTIN", "merchandise_total": "25.00", "discount_total": "0.00",
              "freight_total": "5.00", "tax_total": "1.20", "order_total": "31.20", "created_at": T0,
              "updated_at": T0},
    "order_line": {"order_id": 900001, "line_no": 1, "sku": "SKU-1", "qty": 2, "unit_price": "12.5000",
                   "status": "open"},
    "order_intake": {"channel": "marketplace", "external_order_id": "MP-1001",
                     "payload": json.dumps({"lines": [{"sku": "SKU-1", "qty": 2}]}), "status": "imported",
                     "erp_order_id": 900001, "error": None, "received_at": T0},
    "invoice": {"invoice_id": 70001, "order_id": 900001, "invoice_total": "31.20", "tax_total": "1.20",
                "freight_total": "5.00", "posted_at": T0},
    "credit_memo": {"credit_memo_id": 80001, "order_id": 900001, "rma_id": "RMA-1", "amount": "12.50",
                    "reason": "damaged", "posted_at": T0},
    "inventory_position": {"sku": "SKU-1", "location": "DC-EAST", "on_hand": 120, "allocated": 20,
                           "in_transit": 40, "updated_at": T0},
    "allocation": {"allocation_id": 5_000_000_001, "order_id": 900001, "line_no": 1, "sku": "SKU-1",
                   "location": "DC-EAST", "qty": 2, "status": "allocated", "updated_at": T0},
    "shipment": {"shipment_id": 60001, "order_id": 900001, "location": "DC-EAST", "carrier": "UPS",
                 "tracking_no": "1Z999", "status": "dispatched", "freight_cost": "4.75", "shipped_at": T0},
    "shipment_line": {"shipment_id": 60001, "line_no": 1, "sku": "SKU-1", "qty": 2},
    "return": {"rma_id": "RMA-1", "order_id": 900001, "line_no": 1, "sku": "SKU-1", "qty": 1,
               "disposition": "restock", "received_at": None},
}

OUTPUT_RECORDS: dict[str, dict[str, Any]] = {
    "io.erpsync.Availability": {
        "channel": "marketplace", "sku": "SKU-1", "ats": 76, "on_hand": 120, "allocated": 20,
        "in_transit": 40, "committed_open": 0, "intake_reserved": 0, "safety_stock": 5, "network": 95,
        "status": "active",
        "positions": {"erp": "00000000000000000041", "wms": "00000000000000000042"},
        "version": 7,
        "event_time_ms": 1_795_000_000_000, "published_at_ms": 1_795_000_000_250,
    },
    "io.erpsync.OrderStatus": {
        "channel": "marketplace", "external_order_id": "MP-1001", "order_id": 900001,
        "status": "partially_shipped", "reasons": [],
        "lines": [{"line_no": 1, "sku": "SKU-1", "ordered": 2, "allocated": 2, "shipped": 1}],
        "carriers": ["UPS"], "tracking_numbers": ["1Z999"], "last_fact_ms": 1_795_000_000_000, "version": 4,
    },
    "io.erpsync.SyncException": {
        "id": "oversold:inventory_position:SKU-1", "kind": "oversold", "severity": "error",
        "entity": "inventory_position", "business_key": "SKU-1", "reason": "network stock below zero",
        "detail": json.dumps({"network": -3}), "source": source("wms", "wms.inventory_balances"),
        "first_seen_ms": 1_795_000_000_000, "last_seen_ms": 1_795_000_100_000, "occurrences": 3,
        "state": "open",
    },
    "io.erpsync.AcceptedOrder": {
        "channel": "marketplace", "external_order_id": "MP-1001", "customer_id": "C-000123",
        "payment_status": "approved", "tax_jurisdiction": "US-TX-AUSTIN", "fulfillment_method": "SHIP",
        "currency": "USD", "placed_at": T0, "freight_total": "5.00", "discount_total": "0.00",
        "tax_total": "1.20",
        "lines": [{"line_no": 1, "sku": "SKU-1", "qty": 2, "unit_price": "12.5000"}],
        "accepted_at_ms": 1_795_000_000_500,
    },
}


def _all_samples() -> list[tuple[str, dict[str, Any]]]:
    samples = [(f"io.erpsync.canonical.{ENTITIES[e][0]}", envelope(e) | UPSERTS[e]) for e in sorted(UPSERTS)]
    return samples + list(OUTPUT_RECORDS.items())


def test_samples_cover_the_outputs_and_the_reference_entities(registry: SchemaRegistry) -> None:
    """Hand-written samples: every output and every entity the spec names (any other entity is covered
    by the random records below and by its Debezium fixtures in test_canonicalize)."""
    names = {name for name, _ in _all_samples()}
    assert names >= OUTPUTS | {registry.entity(e).name for e in SPEC_OWNERS}


@pytest.mark.parametrize(("name", "record"), _all_samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_roundtrip(registry: SchemaRegistry, name: str, record: dict[str, Any]) -> None:
    assert registry.decode(registry.encode(name, record)) == (name, record)


@pytest.mark.parametrize("entity", sorted(UPSERTS))
def test_delete_carries_only_the_key(registry: SchemaRegistry, entity: str) -> None:
    meta = registry.entity(entity)
    keys = {k: UPSERTS[entity][k] for k in meta.key}
    delete = envelope(entity) | {"op": "delete"} | keys
    name, decoded = registry.decode(registry.encode(meta.name, delete))
    assert name == meta.name
    assert decoded == delete | {f: None for f in list(meta.fields)[3:] if f not in meta.key}


def test_timestamps_and_dates_accept_ints(registry: SchemaRegistry) -> None:
    as_ints = envelope("price") | UPSERTS["price"] | {"valid_from": 20454, "valid_to": 20818}
    _, decoded = registry.decode(registry.encode("io.erpsync.canonical.Price", as_ints))
    assert decoded["valid_from"] == dt.date(2026, 1, 1) and decoded["valid_to"] == dt.date(2026, 12, 31)
    micros = (T0 - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)
    position = envelope("inventory_position") | UPSERTS["inventory_position"] | {"updated_at": micros}
    _, decoded = registry.decode(registry.encode("io.erpsync.canonical.InventoryPosition", position))
    assert decoded["updated_at"] == T0


def test_encode_rejects_records_that_do_not_fit(registry: SchemaRegistry) -> None:
    name = "io.erpsync.canonical.InventoryPosition"
    good = envelope("inventory_position") | UPSERTS["inventory_position"]
    with pytest.raises(ValueError, match="onhand"):
        registry.encode(name, good | {"onhand": 3})  # a typo is not silently dropped
    with pytest.raises(ValueError, match="on_hand"):
        registry.encode(name, good | {"on_hand": "120"})
    with pytest.raises(ValueError, match="sku"):
        registry.encode(name, {k: v for k, v in good.items() if k != "sku"})
    with pytest.raises(KeyError, match="io.erpsync.Nope"):
        registry.encode("io.erpsync.Nope", good)


# ------------------------------------------------------------------ single-object framing


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO as the Avro specification's reference code computes it."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_single_object_framing(registry: SchemaRegistry) -> None:
    name = "io.erpsync.canonical.InventoryPosition"
    record = envelope("inventory_position") | UPSERTS["inventory_position"]
    schema = registry.schema(name)
    data = registry.encode(name, record)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == struct.pack("<Q", crc64_avro(schema.canonical_form.encode()))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(json.loads(json.dumps(schema.definition))), record)
    assert data[10:] == body.getvalue()


def test_fingerprints_differ_per_schema(registry: SchemaRegistry) -> None:
    fingerprints = {registry.schema(n).fingerprint for n in registry.names()}
    assert len(fingerprints) == len(registry.names())


def test_decode_rejects_what_it_cannot_read(registry: SchemaRegistry) -> None:
    record = envelope("shipment_line") | UPSERTS["shipment_line"]
    good = registry.encode("io.erpsync.canonical.ShipmentLine", record)
    with pytest.raises(ValueError, match="unknown Avro schema fingerprint 0102030405060708"):
        registry.decode(b"\xc3\x01" + bytes(range(1, 9)) + good[10:])
    with pytest.raises(ValueError, match="not Avro single-object encoded"):
        registry.decode(b"\x00" + good[1:])
    with pytest.raises(ValueError, match="truncated"):
        registry.decode(good[:6])
    with pytest.raises(ValueError, match="does not match its writer schema"):
        registry.decode(good[:-3])
    with pytest.raises(ValueError, match="trailing bytes"):
        registry.decode(good + b"\x00")


def test_records_written_with_the_released_schema_stay_readable(tmp_path: Path) -> None:
    current = tmp_path / "avro"
    shutil.copytree(SCHEMA_DIR, current)
    path = current / "inventory_position.avsc"
    schema = json.loads(path.read_text())
    schema["fields"].append({"name": "bin", "type": ["null", "string"], "default": None, "doc": "Bin."})
    path.write_text(json.dumps(schema))
    old_registry = SchemaRegistry.load(SCHEMA_DIR)
    new_registry = SchemaRegistry.load(current, released=SCHEMA_DIR)
    name = "io.erpsync.canonical.InventoryPosition"
    assert new_registry.schema(name).fingerprint != old_registry.schema(name).fingerprint
    record = envelope("inventory_position") | UPSERTS["inventory_position"]
    assert new_registry.decode(old_registry.encode(name, record)) == (name, record | {"bin": None})
    with pytest.raises(ValueError, match="unknown Avro schema fingerprint"):
        SchemaRegistry.load(current).decode(old_registry.encode(name, record))


# ------------------------------------------------------------------ Kafka value serializers


def test_default_serializer_is_single_object_encoding(registry: SchemaRegistry) -> None:
    serialize = make_value_serializer(registry, None)
    deserialize = make_value_deserializer(registry, None)
    name, record = "io.erpsync.Availability", OUTPUT_RECORDS["io.erpsync.Availability"]
    data = serialize("availability.marketplace", name, record)
    assert data == registry.encode(name, record)
    assert deserialize("availability.marketplace", data) == (name, record)
    with pytest.raises(ValueError, match="no schema registry URL"):
        deserialize("availability.marketplace", b"\x00\x00\x00\x00\x01" + data[10:])
    with pytest.raises(ValueError, match=r"availability\.marketplace.*first byte '7b'"):
        deserialize("availability.marketplace", b'{"sku": "SKU-1"}')


class FakeSchemaRegistryClient:
    """Stands in for a client of one schema registry server (the class-level state)."""

    instances: list[FakeSchemaRegistryClient] = []
    subjects: dict[str, list[int]] = {}
    schemas: dict[int, str] = {}

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        FakeSchemaRegistryClient.instances.append(self)

    def register(self, subject: str, schema_str: str) -> int:
        schema_id = next((i for i, s in self.schemas.items() if s == schema_str), 100 + len(self.schemas))
        self.schemas[schema_id] = schema_str
        self.subjects.setdefault(subject, []).append(schema_id)
        return schema_id

    def get_schema(self, schema_id: int) -> Any:
        return types.SimpleNamespace(schema_str=self.schemas[schema_id], references=[])


class FakeAvroSerializer:
    """confluent-kafka's AvroSerializer contract: subject <topic>-<field>, magic 0, 4-byte id."""

    instances: list[FakeAvroSerializer] = []

    def __init__(self, client: FakeSchemaRegistryClient, schema_str: str, *args: Any, **kwargs: Any) -> None:
        assert not args and not kwargs, "subject name strategy must stay the default (TopicNameStrategy)"
        self.client, self.schema_str = client, schema_str
        self.parsed = fastavro.parse_schema(json.loads(schema_str), named_schemas={})
        FakeAvroSerializer.instances.append(self)

    def __call__(self, obj: dict[str, Any], ctx: Any) -> bytes:
        schema_id = self.client.register(f"{ctx.topic}-{ctx.field}", self.schema_str)
        body = io.BytesIO()
        fastavro.schemaless_writer(body, self.parsed, obj)
        return b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()


@pytest.fixture
def fake_confluent(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeSchemaRegistryClient.instances = []
    FakeSchemaRegistryClient.subjects = {}
    FakeSchemaRegistryClient.schemas = {}
    FakeAvroSerializer.instances = []
    sr = types.ModuleType("confluent_kafka.schema_registry")
    sr.SchemaRegistryClient = FakeSchemaRegistryClient  # type: ignore[attr-defined]
    avro = types.ModuleType("confluent_kafka.schema_registry.avro")
    avro.AvroSerializer = FakeAvroSerializer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "confluent_kafka.schema_registry", sr)
    monkeypatch.setitem(sys.modules, "confluent_kafka.schema_registry.avro", avro)


@pytest.mark.usefixtures("fake_confluent")
def test_schema_registry_url_selects_confluent_framing(registry: SchemaRegistry) -> None:
    serialize = make_value_serializer(registry, "http://registry:8081")
    deserialize = make_value_deserializer(registry, "http://registry:8081")
    assert FakeSchemaRegistryClient.instances == []  # nothing is contacted before the first record

    name, record = "io.erpsync.Availability", OUTPUT_RECORDS["io.erpsync.Availability"]
    data = serialize("availability.marketplace", name, record)
    assert [c.conf for c in FakeSchemaRegistryClient.instances] == [{"url": "http://registry:8081"}]
    assert data[:1] == b"\x00"
    schema_id = int.from_bytes(data[1:5], "big")
    assert FakeSchemaRegistryClient.subjects == {"availability.marketplace-value": [schema_id]}
    # What gets registered is the self-contained schema, docs included.
    assert json.loads(FakeSchemaRegistryClient.schemas[schema_id]) == registry.schema(name).definition

    serialize("availability.marketplace", name, record)
    serialize("availability.b2b-portal", name, record)
    assert len(FakeAvroSerializer.instances) == 2  # one serializer per topic
    assert len(FakeSchemaRegistryClient.instances) == 1  # one client for all of them
    subjects = {"availability.marketplace-value", "availability.b2b-portal-value"}
    assert set(FakeSchemaRegistryClient.subjects) == subjects

    # The value deserializer reads both framings.
    assert deserialize("availability.marketplace", data) == (name, record)
    assert deserialize("availability.marketplace", registry.encode(name, record)) == (name, record)


@pytest.mark.usefixtures("fake_confluent")
def test_confluent_deserializer_resolves_to_the_current_schema(registry: SchemaRegistry) -> None:
    name = "io.erpsync.canonical.ShipmentLine"
    record = envelope("shipment_line") | UPSERTS["shipment_line"]
    deserialize = make_value_deserializer(registry, "http://registry:8081")
    assert deserialize("canonical.shipment-line", registry.encode(name, record)) == (name, record)
    assert FakeSchemaRegistryClient.instances == []  # single-object records need no registry

    # Registered by an older producer whose schema had no sku field yet.
    old = json.loads(json.dumps(registry.schema(name).definition))
    old["fields"] = [fd for fd in old["fields"] if fd["name"] != "sku"]
    FakeSchemaRegistryClient.schemas[7] = json.dumps(old)
    written = {k: v for k, v in record.items() if k != "sku"}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(old, named_schemas={}), written)
    data = b"\x00" + (7).to_bytes(4, "big") + body.getvalue()
    assert deserialize("canonical.shipment-line", data) == (name, written | {"sku": None})


def test_missing_schema_registry_extras_fail_clearly(
    registry: SchemaRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka.schema_registry", None)  # import now raises ImportError
    serialize = make_value_serializer(registry, "http://registry:8081")
    with pytest.raises(RuntimeError, match=r"confluent-kafka\[avro,schemaregistry\]"):
        serialize("availability.x", "io.erpsync.Availability", OUTPUT_RECORDS["io.erpsync.Availability"])


# ------------------------------------------------------------------ property: random records roundtrip


def avro_strategy(schema: Any, names: dict[str, st.SearchStrategy[Any]], namespace: str = "") -> Any:
    """Hypothesis strategy for values of a self-contained Avro schema (the subset the contract uses)."""
    if isinstance(schema, list):
        return st.one_of([avro_strategy(b, names, namespace) for b in schema])
    if isinstance(schema, str):
        primitives: dict[str, st.SearchStrategy[Any]] = {
            "null": st.none(), "boolean": st.booleans(), "string": st.text(max_size=12),
            "int": st.integers(-(2**31), 2**31 - 1), "long": st.integers(-(2**63), 2**63 - 1),
        }
        if schema in primitives:
            return primitives[schema]
        return names[schema if "." in schema else f"{namespace}.{schema}"]
    kind = schema["type"]
    if schema.get("logicalType") == "date":
        return st.dates()
    if schema.get("logicalType") == "timestamp-micros":
        return st.datetimes(timezones=st.just(UTC))
    name = schema.get("name", "")
    full = name if "." in name else f"{schema.get('namespace', namespace)}.{name}"
    if kind == "enum":
        names[full] = st.sampled_from(schema["symbols"])
        return names[full]
    if kind == "record":
        inner = full.rpartition(".")[0]
        fields = {fd["name"]: avro_strategy(fd["type"], names, inner) for fd in schema["fields"]}
        names[full] = st.fixed_dictionaries(fields)
        return names[full]
    if kind == "array":
        return st.lists(avro_strategy(schema["items"], names, namespace), max_size=3)
    if kind == "map":
        values = avro_strategy(schema["values"], names, namespace)
        return st.dictionaries(st.text(max_size=6), values, max_size=3)
    return avro_strategy(kind, names, namespace)


# Every schema, entities added later included.
PROPERTY_SCHEMAS = SchemaRegistry.load().names()


@pytest.mark.parametrize("name", PROPERTY_SCHEMAS)
def test_random_records_roundtrip(registry: SchemaRegistry, name: str) -> None:
    @settings(max_examples=60, deadline=None)
    @given(avro_strategy(registry.schema(name).definition, {}))
    def roundtrip(record: dict[str, Any]) -> None:
        assert registry.decode(registry.encode(name, record)) == (name, record)

    roundtrip()
