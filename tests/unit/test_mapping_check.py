"""`erpsync mappings check`: each kind of mistake is caught with one line naming the file, key and problem."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from schemas.mapping import MAPPINGS_DIR
from schemas.mapping_check import (
    Catalog,
    Column,
    Problem,
    Table,
    check_static,
    check_tables,
    reference_catalog,
)
from schemas.registry import SCHEMA_DIR, SchemaRegistry

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = sorted((ROOT / "reference").glob("*.sql"))
SYSTEMS = {"erp", "wms"}


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load(SCHEMA_DIR, released=None)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return reference_catalog(REFERENCE)


def test_the_packaged_mappings_pass(registry: SchemaRegistry, catalog: Catalog) -> None:
    assert check_static(registry, MAPPINGS_DIR, SYSTEMS) == []
    assert check_tables(registry, MAPPINGS_DIR, catalog) == []


def test_the_reference_catalog_reads_both_dialects(catalog: Catalog) -> None:
    items, balances = catalog.tables["erp.items"], catalog.tables["wms.inventory_balances"]
    assert items.primary_key == ("sku",) and balances.primary_key == ("sku", "location")
    assert catalog.tables["erp.price_list_lines"].columns["unit_price"] == Column(
        "unit_price", "decimal(12, 4)", "decimal", scale=4)
    assert balances.columns["updated_at"].family == "timestamp" and balances.columns["updated_at"].precision == 6
    assert items.columns["updated_at"].family == "timestamptz"


def edit(tmp_path: Path, filename: str, change: Callable[[str], str]) -> Path:
    """A copy of the packaged mappings with one file changed."""
    directory = tmp_path / "mappings"
    shutil.copytree(MAPPINGS_DIR, directory)
    path = directory / filename
    text = path.read_text()
    changed = change(text)
    assert changed != text, "the edit must change the file"
    path.write_text(changed)
    return directory


# (id, file, edit, the expected problem: "<key>: <message fragment>")
STATIC_CASES: list[tuple[str, str, Callable[[str], str], str]] = [
    ("system not the owner", "erp.items.toml", lambda t: t.replace('system = "erp"', 'system = "wms"'),
     "system: 'wms' does not own item (its owner is 'erp', the \"owner\" of its schema): every row would become a "
     "sor_violation exception, none applied; fix the system, or set non_owner = true if that is the intent"),
    ("system no connector captures", "erp.items.toml", lambda t: t.replace('system = "erp"', 'system = "erp2"'),
     "system: no connector captures system 'erp2' (the topic.prefix of the connectors: erp, wms): its topic "
     "erp2.erp.items would never receive a record"),
    ("unknown entity", "erp.items.toml", lambda t: t.replace('entity = "item"', 'entity = "itme"'),
     "entity: unknown canonical entity 'itme' (did you mean 'item'?)"),
    ("misspelled key", "wms.allocations.toml", lambda t: t.replace("full_before_image", "full_before_imgae"),
     "full_before_imgae: unknown key; expected one of entity, fields, full_before_image, non_owner, system, "
     "table, toastable"),
    ("field not in the entity", "erp.items.toml", lambda t: t.replace("uom = ", "uon = "),
     "fields.uon: not a field of io.erpsync.canonical.Item (did you mean 'uom'?)"),
    ("field type against Avro", "erp.items.toml", lambda t: t.replace('safety_stock = { type = "int"',
                                                                       'safety_stock = { type = "long"'),
     "fields.safety_stock: type 'long' is encoded as long, but io.erpsync.canonical.Item.safety_stock is "
     "[null, int]"),
    ("unknown type", "erp.items.toml", lambda t: t.replace('uom = "string"', 'uom = "varchar"'),
     "fields.uom: unknown type 'varchar'"),
    ("unknown field option", "erp.items.toml", lambda t: t.replace("min = 0", "minimum = 0"),
     "fields.safety_stock.minimum: unknown key; expected one of from, min, required, symbols, type"),
    ("key field not mapped", "erp.items.toml", lambda t: t.replace('sku = "string"\n', ""),
     "fields.sku: key field of item not mapped"),
    ("envelope field mapped", "erp.items.toml", lambda t: t + 'event_id = "string"\n',
     "fields.event_id: set by the canonicalizer from the source coordinates; do not map it"),
    ("non_owner on the owner", "erp.items.toml", lambda t: "non_owner = true\n" + t,
     "non_owner: 'erp' owns item; remove non_owner"),
    ("invalid TOML", "erp.items.toml", lambda t: t.replace('entity = "item"', "entity = item"),
     "-: not valid TOML"),
    ("two mappings for one table", "erp.customers.toml", lambda t: t.replace('table = "erp.customers"',
                                                                             'table = "erp.items"'),
     "table: erp.erp.items is mapped by"),
]


@pytest.mark.parametrize(("filename", "change", "expected"), [c[1:] for c in STATIC_CASES],
                         ids=[c[0] for c in STATIC_CASES])
def test_static_mistakes(tmp_path: Path, registry: SchemaRegistry, filename: str, change: Callable[[str], str],
                         expected: str) -> None:
    problems = check_static(registry, edit(tmp_path, filename, change), SYSTEMS)
    assert problems, "the mistake went unnoticed"
    assert any(p.file in (filename, "erp.items.toml") and f"{p.key}: {p.message}".startswith(expected)
               for p in problems), [str(p) for p in problems]


def test_a_non_owner_copy_is_allowed_when_declared(tmp_path: Path, registry: SchemaRegistry) -> None:
    directory = tmp_path / "mappings"
    shutil.copytree(MAPPINGS_DIR, directory)
    rogue = (directory / "erp.items.toml").read_text().replace('system = "erp"', 'system = "wms"')
    rogue = rogue.replace('table = "erp.items"', 'table = "wms.item_master"')
    (directory / "wms.item_master.toml").write_text("non_owner = true  # the WMS's copy: report its changes\n" + rogue)
    assert check_static(registry, directory, SYSTEMS) == []


TABLE_CASES: list[tuple[str, str, Callable[[str], str], str]] = [
    ("wrong table", "erp.items.toml", lambda t: t.replace('table = "erp.items"', 'table = "erp.itmes"'),
     "table: no table erp.itmes in the reference schemas (erp.postgres.sql, wms.mysql.sql) (did you mean "
     "erp.items?)"),
    ("missing column", "erp.items.toml", lambda t: t.replace('uom = "string"', 'uom = { type = "string", '
                                                                               'from = "unit" }'),
     "fields.uom: no column unit in erp.items"),
    ("decimal scale", "erp.customers.toml", lambda t: t.replace('"decimal:2"', '"decimal:4"', 1),
     "fields.credit_limit: erp.customers.credit_limit is decimal(14, 2): its scale is 2: use decimal:2"),
    ("column type", "erp.items.toml", lambda t: t.replace('description = "string"', 'description = "long"'),
     "fields.description: erp.items.description is text: field type 'long' does not read it"),
    ("epoch unit", "wms.allocations.toml", lambda t: t.replace('updated_at = "timestamp_us"',
                                                               'updated_at = "timestamp_ms"'),
     "fields.updated_at: wms.allocations.updated_at is datetime(6): Debezium sends epoch microseconds for it: "
     "use timestamp_us"),
    ("zoned timestamp read as epoch", "erp.items.toml", lambda t: t.replace('updated_at = "timestamp"',
                                                                             'updated_at = "timestamp_us"'),
     "fields.updated_at: erp.items.updated_at is timestamptz: field type 'timestamp_us' does not read it"),
]


@pytest.mark.parametrize(("filename", "change", "expected"), [c[1:] for c in TABLE_CASES],
                         ids=[c[0] for c in TABLE_CASES])
def test_table_mistakes(tmp_path: Path, registry: SchemaRegistry, catalog: Catalog, filename: str,
                        change: Callable[[str], str], expected: str) -> None:
    directory = edit(tmp_path, filename, change)
    problems = check_tables(registry, directory, catalog)
    assert [f"{p.key}: {p.message}" for p in problems if p.file == filename] == [expected]


def test_the_entity_key_must_be_the_primary_key(registry: SchemaRegistry, catalog: Catalog) -> None:
    items = catalog.tables["erp.items"]
    wrong = Catalog({**catalog.tables, "erp.items": Table("erp.items", items.columns, ("description",))}, "a DDL")
    assert [str(p) for p in check_tables(registry, MAPPINGS_DIR, wrong)] == [
        "erp.items.toml: table: the key of item (sku) is not the primary key of erp.items (description): Debezium "
        "keys and partitions records by the primary key"]


def test_schema_side_mistakes(tmp_path: Path) -> None:
    schemas = tmp_path / "avro"
    shutil.copytree(SCHEMA_DIR, schemas)
    item = json.loads((schemas / "item.avsc").read_text())
    for f in item["fields"]:
        if f["name"] == "uom":
            f["type"], _ = "string", f.pop("default")  # not nullable any more, but the mapping may give null
    item["fields"].append({"name": "brand", "type": "string", "doc": "No default, not mapped."})
    (schemas / "item.avsc").write_text(json.dumps(item))
    problems = {str(p) for p in check_static(SchemaRegistry.load(schemas, released=None), MAPPINGS_DIR, SYSTEMS)}
    assert problems == {
        "erp.items.toml: fields.uom: may be null (not required), but io.erpsync.canonical.Item.uom is not nullable: "
        "set required = true, or make the schema field nullable",
        "erp.items.toml: fields.brand: not mapped, and io.erpsync.canonical.Item gives it no default: every record "
        "would fail to encode",
    }


def test_problems_read_as_one_line() -> None:
    assert str(Problem("erp.items.toml", "system", "wrong")) == "erp.items.toml: system: wrong"


def erpsync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "erpsync", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_cli_check(tmp_path: Path) -> None:
    ok = erpsync("mappings", "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    files = len(list(MAPPINGS_DIR.glob("*.toml")))
    assert re.fullmatch(rf"mappings: {files} files in \S+ checked against \S+ and the reference schemas "
                        r"\(erp\.postgres\.sql, wms\.mysql\.sql\): ok\n", ok.stdout), ok.stdout
    directory = edit(tmp_path, "erp.items.toml", lambda t: t.replace('table = "erp.items"', 'table = "erp.itmes"'))
    bad = erpsync("mappings", "check", "--mappings", str(directory))
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        f"{directory / 'erp.items.toml'}: table: no table erp.itmes in the reference schemas (erp.postgres.sql, "
        "wms.mysql.sql) (did you mean erp.items?)",
        f"mappings: {files} files in {directory} checked against {SCHEMA_DIR} and the reference schemas "
        "(erp.postgres.sql, wms.mysql.sql): 1 problem(s)",
    ]
    usage = erpsync("mappings", "check", "--mappings", str(tmp_path / "nowhere"))
    assert usage.returncode == 2 and usage.stderr.strip().endswith(f"no mappings directory {tmp_path / 'nowhere'}")


def test_the_pipeline_refuses_to_start_on_a_bad_mapping(tmp_path: Path) -> None:
    import os  # noqa: PLC0415

    directory = edit(tmp_path, "erp.items.toml", lambda t: t.replace('system = "erp"', 'system = "wsm"'))
    env = dict(os.environ, ERPSYNC_FLOWS__MAPPINGS_DIR=str(directory), ERPSYNC_FLOWS__RECOVERY_DIR=str(tmp_path / "r"))
    run = erpsync("run", env=env)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last == (f"erpsync: refusing to start, mapping check failed: {directory / 'erp.items.toml'}: system: "
                    "'wsm' does not own item (its owner is 'erp', the \"owner\" of its schema): every row would become "
                    "a sor_violation exception, none applied; fix the system, or set non_owner = true if that is the "
                    "intent")
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "r").exists()  # refused before anything started
