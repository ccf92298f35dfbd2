"""Schema evolution: compatibility modes against the released history, erpsync's own rules, releases."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest

from schemas.compat import (
    DEFAULT_MODE,
    Mode,
    check,
    check_backward_compatible,
    check_directory,
    check_schema,
    mode_of,
    release,
)
from schemas.registry import RELEASED_DIR, SCHEMA_DIR, SchemaRegistry, read_history, read_schema_files


def rec(*fields: dict[str, Any], name: str = "R", **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "t", "fields": list(fields), **extra}


def f(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def enum(*symbols: str, name: str = "E", **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": name, "symbols": list(symbols), **extra}


OPT = ["null", "string"]  # how every non-key canonical field is declared: nullable, default null


# ------------------------------------------------------------------ Avro resolution (avro.compatibility)

INNER = {"type": "record", "name": "Inner", "fields": [f("x", "int")]}
INNER_PLUS_REQUIRED = {"type": "record", "name": "Inner", "fields": [f("x", "int"), f("y", "int")]}
INNER_PLUS_DEFAULT = {"type": "record", "name": "Inner", "fields": [f("x", "int"), f("y", "int", default=0)]}
LIST_NODE = {
    "type": "record", "name": "Node", "fields": [f("v", "int"), f("next", ["null", "Node"], default=None)]
}

# (id, old, new, None if a reader with new reads old's data, else a fragment of the expected problem)
BACKWARD_CASES: list[tuple[str, dict[str, Any], dict[str, Any], str | None]] = [
    ("identical", rec(f("a", "int")), rec(f("a", "int")), None),
    ("field added with default", rec(f("a", "int")), rec(f("a", "int"), f("b", OPT, default=None)), None),
    ("field added without default", rec(f("a", "int")), rec(f("a", "int"), f("b", "string")),
     "t.R.b: added without a default (data written with the old schema lack it)"),
    ("field removed", rec(f("a", "int"), f("b", "string")), rec(f("a", "int")), None),
    ("field renamed with alias", rec(f("a", "int")), rec(f("z", "int", aliases=["a"])), None),
    ("field renamed without alias", rec(f("a", "int")), rec(f("z", "int")), "t.R.z: added without a default"),
    ("int to long", rec(f("a", "int")), rec(f("a", "long")), None),
    ("long to int", rec(f("a", "long")), rec(f("a", "int")),
     "t.R.a: reader type: int not compatible with writer type: long"),
    ("float to double", rec(f("a", "float")), rec(f("a", "double")), None),
    ("double to float", rec(f("a", "double")), rec(f("a", "float")), "reader type: float not compatible"),
    ("string to bytes", rec(f("a", "string")), rec(f("a", "bytes")), None),
    ("string to int", rec(f("a", "string")), rec(f("a", "int")), "t.R.a: reader type: int not compatible"),
    ("wrapped primitive", rec(f("a", {"type": "int"})), rec(f("a", "long")), None),
    ("enum symbol added", rec(f("e", enum("a", "b"))), rec(f("e", enum("a", "b", "c"))), None),
    ("enum symbol removed", rec(f("e", enum("a", "b"))), rec(f("e", enum("a"))),
     "t.R.e: enum symbols {'b'} of data written with the old schema are unknown to the reader"),
    ("enum symbol removed, enum default", rec(f("e", enum("a", "b"))), rec(f("e", enum("a", default="a"))),
     None),
    ("enum renamed", rec(f("e", enum("a"))), rec(f("e", enum("a", name="F"))),
     "t.R.e: named type renamed without an alias (expected: t.E)"),
    ("union widened", rec(f("a", "string")), rec(f("a", OPT, default=None)), None),
    ("union narrowed to its branch", rec(f("a", OPT)), rec(f("a", "string")),
     "t.R.a<null>: reader type: string not compatible with writer type: null"),
    ("union branch removed", rec(f("a", ["null", "int", "string"])), rec(f("a", ["null", "int"])),
     "t.R.a<string>: string matches no branch of the union ['null', 'int']"),
    ("union branch promoted", rec(f("a", ["null", "int"])), rec(f("a", ["null", "long"])), None),
    ("array items promoted", rec(f("a", {"type": "array", "items": "int"})),
     rec(f("a", {"type": "array", "items": "long"})), None),
    ("array items narrowed", rec(f("a", {"type": "array", "items": "long"})),
     rec(f("a", {"type": "array", "items": "int"})), "t.R.a[]: reader type: int not compatible"),
    ("map values string to bytes", rec(f("m", {"type": "map", "values": "string"})),
     rec(f("m", {"type": "map", "values": "bytes"})), None),
    ("map values string to int", rec(f("m", {"type": "map", "values": "string"})),
     rec(f("m", {"type": "map", "values": "int"})), "t.R.m{}: reader type: int not compatible"),
    ("named reference, field with default", rec(f("a", INNER), f("b", "Inner")),
     rec(f("a", INNER_PLUS_DEFAULT), f("b", "t.Inner")), None),
    ("named reference, field without default", rec(f("a", INNER), f("b", "Inner")),
     rec(f("a", INNER_PLUS_REQUIRED), f("b", "t.Inner")), "t.R.a.y: added without a default"),
    ("nested record in a nullable field", rec(f("s", ["null", INNER], default=None)),
     rec(f("s", ["null", INNER_PLUS_REQUIRED], default=None)), "t.R.s<Inner>.y: added without a default"),
    ("recursive type", rec(f("head", LIST_NODE)), rec(f("head", LIST_NODE)), None),
    ("logical type kept", rec(f("t", {"type": "long", "logicalType": "timestamp-micros"})),
     rec(f("t", ["null", {"type": "long", "logicalType": "timestamp-micros"}], default=None)), None),
    # Resolution passes (both are longs); erpsync's own rule catches the 1000x misreading.
    ("logical type changed", rec(f("t", {"type": "long", "logicalType": "timestamp-micros"})),
     rec(f("t", {"type": "long", "logicalType": "timestamp-millis"})),
     "t.R.t: logical type changed from timestamp-micros to timestamp-millis"),
    ("logical type added", rec(f("t", "long")), rec(f("t", {"type": "long", "logicalType": "timestamp-micros"})),
     "t.R.t: logical type changed from none to timestamp-micros"),
    ("fixed size kept", rec(f("x", {"type": "fixed", "name": "X", "size": 4})),
     rec(f("x", {"type": "fixed", "name": "X", "size": 4})), None),
    ("fixed size changed", rec(f("x", {"type": "fixed", "name": "X", "size": 4})),
     rec(f("x", {"type": "fixed", "name": "X", "size": 8})), "t.R.x: fixed size changed (expected: 4, found: 8)"),
    ("record renamed", rec(f("a", "int")), rec(f("a", "int"), name="S"),
     "t.S: named type renamed without an alias (expected: t.R)"),
    ("record renamed with alias", rec(f("a", "int")), rec(f("a", "int"), name="S", aliases=["R"]), None),
]


@pytest.mark.parametrize(("old", "new", "problem"), [c[1:] for c in BACKWARD_CASES], ids=[c[0] for c in BACKWARD_CASES])
def test_backward_resolution(old: dict[str, Any], new: dict[str, Any], problem: str | None) -> None:
    fastavro.parse_schema(old, named_schemas={})  # the cases themselves are valid Avro
    fastavro.parse_schema(new, named_schemas={})
    problems = check_backward_compatible(old, new)
    if problem is None:
        assert problems == []
    else:
        assert problems and problem in problems[0], problems


# ------------------------------------------------------------------ the modes, against a history

V1 = rec(f("a", "int"))
V2 = rec(f("a", "int"), f("b", "string", default=""))
ADD_OPTIONAL = rec(f("a", "int"), f("b", "string", default=""), f("c", OPT, default=None))
ADD_REQUIRED = rec(f("a", "int"), f("b", "string", default=""), f("c", "string"))
DROP_DEFAULTED = rec(f("a", "int"))  # drops b, which has a default
DROP_REQUIRED = rec(f("b", "string", default=""))  # drops a, which has none
B_REQUIRED = rec(f("a", "int"), f("b", "string"))  # v2's b loses its default


def with_mode(schema: dict[str, Any], mode: Mode) -> dict[str, Any]:
    return dict(schema, compatibility=mode.value)


# (mode, history, new schema, None if it passes, else a fragment of the first problem)
MODE_CASES: list[tuple[Mode, list[dict[str, Any]], dict[str, Any], str | None]] = [
    (Mode.BACKWARD, [V1, V2], ADD_OPTIONAL, None),
    (Mode.BACKWARD, [V1, V2], DROP_REQUIRED, None),  # old readers are not its concern
    (Mode.BACKWARD, [V1, V2], ADD_REQUIRED, "(BACKWARD against v2): t.R.c: added without a default"),
    (Mode.BACKWARD, [V1, V2], B_REQUIRED, None),  # v2 data always has b
    (Mode.BACKWARD_TRANSITIVE, [V1, V2], ADD_OPTIONAL, None),
    (Mode.BACKWARD_TRANSITIVE, [V1, V2], B_REQUIRED, "(BACKWARD_TRANSITIVE against v1): t.R.b: added without"),
    (Mode.FORWARD, [V1, V2], ADD_REQUIRED, None),  # old readers skip the new field
    (Mode.FORWARD, [V1, V2], DROP_DEFAULTED, None),
    (Mode.FORWARD, [V1, V2], DROP_REQUIRED,
     "(FORWARD against v2): t.R.a: removed, but readers of v2 require it (no default there)"),
    (Mode.FORWARD_TRANSITIVE, [B_REQUIRED, V2], DROP_DEFAULTED,
     "(FORWARD_TRANSITIVE against v1): t.R.b: removed, but readers of v1 require it"),
    (Mode.FORWARD_TRANSITIVE, [V1, V2], ADD_REQUIRED, None),
    (Mode.FULL, [V1, V2], ADD_OPTIONAL, None),
    (Mode.FULL, [V1, V2], DROP_DEFAULTED, None),
    (Mode.FULL, [V1, V2], ADD_REQUIRED, "(FULL against v2): t.R.c: added without a default"),
    (Mode.FULL, [V1, V2], DROP_REQUIRED, "(FULL against v2): t.R.a: removed, but readers of v2 require it"),
    (Mode.FULL, [V1, V2], B_REQUIRED, None),
    (Mode.FULL_TRANSITIVE, [V1, V2], ADD_OPTIONAL, None),
    (Mode.FULL_TRANSITIVE, [V1, V2], B_REQUIRED, "(FULL_TRANSITIVE against v1): t.R.b: added without a default"),
]


@pytest.mark.parametrize(("mode", "history", "new", "problem"), MODE_CASES,
                         ids=[f"{c[0].value}-{i}" for i, c in enumerate(MODE_CASES)])
def test_modes(mode: Mode, history: list[dict[str, Any]], new: dict[str, Any], problem: str | None) -> None:
    versions = [(f"v{i}", schema) for i, schema in enumerate(history, 1)]
    problems = check_schema(with_mode(new, mode), versions)
    if problem is None:
        assert problems == []
    else:
        assert problems and problem in problems[0], problems
        assert problems[0].startswith(f"t.R ({mode.value} against v")


def test_every_mode_has_a_passing_and_a_failing_case() -> None:
    outcomes = {(mode, problem is None) for mode, _, _, problem in MODE_CASES}
    assert outcomes == {(m, ok) for m in Mode for ok in (True, False)}


def test_default_mode_and_unknown_modes() -> None:
    assert mode_of(V1) is DEFAULT_MODE is Mode.FULL
    assert mode_of(with_mode(V1, Mode.FORWARD)) is Mode.FORWARD
    with pytest.raises(ValueError, match="t.R: unknown compatibility 'NONE'; expected one of BACKWARD"):
        mode_of(dict(V1, compatibility="NONE"))


# ------------------------------------------------------------------ erpsync's own rules

ENTITY_V1 = rec(f("order_id", "long"), f("line_no", "int"), f("sku", OPT, default=None), f("note", OPT, default=None),
                name="Line", entity="order_line", owner="erp", key=["order_id", "line_no"])


@pytest.mark.parametrize("mode", list(Mode))
def test_a_key_change_is_breaking_in_every_mode(mode: Mode) -> None:
    new = with_mode(dict(ENTITY_V1, key=["order_id"]), mode)
    assert check_schema(with_mode(ENTITY_V1, mode), [("v1", ENTITY_V1)]) == []
    [problem] = check_schema(new, [("v1", ENTITY_V1)])
    assert problem == (f"t.Line ({mode.value} against v1): key fields changed from ['order_id', 'line_no'] to "
                       "['order_id']: a new key is a new entity (new schema, new topic), not an evolution")


def test_an_entity_rename_is_breaking() -> None:
    [problem] = check_schema(dict(ENTITY_V1, entity="line"), [("v1", ENTITY_V1)])
    assert "entity changed from 'order_line' to 'line' (its topic changes)" in problem


def renamed(aliases: list[str] | None = None) -> dict[str, Any]:
    fields = [dict(fd) for fd in ENTITY_V1["fields"]]
    fields[2] = f("item_sku", OPT, default=None, **({"aliases": aliases} if aliases else {}))
    return dict(ENTITY_V1, fields=fields)


def test_a_rename_without_an_alias_is_breaking_although_every_mode_resolves_it() -> None:
    new = renamed()
    # Both fields are nullable with a default: Avro resolution passes it both ways (FULL).
    assert check_backward_compatible(ENTITY_V1, new) == check_backward_compatible(new, ENTITY_V1) == []
    [problem] = check_schema(with_mode(new, Mode.FULL_TRANSITIVE), [("v1", ENTITY_V1)])
    assert problem == ('t.Line (against v1): t.Line.item_sku: added while sku of the same type was removed: '
                       'a rename without an alias loses the data for readers; add "aliases": [\'sku\'] to the new '
                       'field, or release the removal and the addition separately')


def test_a_rename_with_an_alias_passes_and_keeps_reading_old_data() -> None:
    new = renamed(["sku"])
    assert check_schema(new, [("v1", ENTITY_V1)]) == []
    old_data = {"order_id": 1, "line_no": 2, "sku": "SKU-1", "note": None}
    import io  # noqa: PLC0415

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(ENTITY_V1, named_schemas={}), old_data)
    buf.seek(0)
    read = fastavro.schemaless_reader(buf, fastavro.parse_schema(ENTITY_V1, named_schemas={}),
                                      fastavro.parse_schema(new, named_schemas={}))
    assert read["item_sku"] == "SKU-1"  # what the alias is for


def test_a_removal_and_an_addition_in_separate_releases_pass() -> None:
    dropped = dict(ENTITY_V1, fields=[fd for fd in ENTITY_V1["fields"] if fd["name"] != "sku"])
    added = dict(dropped, fields=[*dropped["fields"], f("item_sku", OPT, default=None)])
    history = [("v1", ENTITY_V1), ("v2", dropped)]
    assert check_schema(with_mode(added, Mode.FULL_TRANSITIVE), history) == []


# ------------------------------------------------------------------ the repository and its releases


def test_the_repository_schemas_pass_their_modes_against_every_release() -> None:
    assert check_directory(SCHEMA_DIR, RELEASED_DIR) == []
    assert [label for label, _ in read_history(RELEASED_DIR)][:1] == ["v1"]


def test_declared_modes_of_the_contract() -> None:
    modes = {name: mode_of(d) for name, d in read_schema_files(SCHEMA_DIR).items()}
    # Compacted topics keep a record written with every release: every release must stay readable.
    assert modes["io.erpsync.Availability"] is modes["io.erpsync.OrderStatus"] is Mode.FULL_TRANSITIVE
    assert {m for n, m in modes.items() if n.startswith("io.erpsync.canonical.")} == {DEFAULT_MODE}


def test_check_directory_catches_incompatible_edits(tmp_path: Path) -> None:
    current = tmp_path / "avro"
    shutil.copytree(SCHEMA_DIR, current)
    history = tmp_path / "released"
    shutil.copytree(SCHEMA_DIR, history / "v1")
    assert check_directory(current, history) == []

    order_status = json.loads((current / "order_status.avsc").read_text())
    order_status["fields"][3]["type"]["symbols"].remove("rejected")
    (current / "order_status.avsc").write_text(json.dumps(order_status))
    common = json.loads((current / "common.avsc").read_text())
    common[1]["fields"].append({"name": "lsn", "type": "long", "doc": "new, required"})
    (current / "common.avsc").write_text(json.dumps(common))
    (current / "return.avsc").unlink()

    problems = check_directory(current, history)
    assert ("io.erpsync.OrderStatus (FULL_TRANSITIVE against v1): io.erpsync.OrderStatus.status: enum symbols "
            "{'rejected'} of data written with v1 are unknown to the reader, whose enum has no default") in problems
    assert "io.erpsync.canonical.Return: released in v1, removed from the current schemas" in problems
    # The shared Source record changed under every remaining canonical entity and under SyncException.
    entities = SchemaRegistry.load(SCHEMA_DIR).entities()
    source = sorted(p for p in problems if ".lsn:" in p)
    expected = [f"{e.name} (FULL against v1): {e.name}.source.lsn" for e in entities.values() if e.entity != "return"]
    expected.append("io.erpsync.SyncException (FULL against v1): io.erpsync.SyncException.source<Source>.lsn")
    assert source == sorted(f"{p}: added without a default (data written with v1 lack it)" for p in expected)
    assert len(problems) == 2 + len(source)


def test_release_cuts_the_next_version_only_when_compatible_and_changed(tmp_path: Path) -> None:
    current, history = tmp_path / "avro", tmp_path / "released"
    shutil.copytree(SCHEMA_DIR, current)
    assert release(current, history) == "v1"
    with pytest.raises(ValueError, match="nothing to release: .* is identical to v1"):
        release(current, history)

    path = current / "item.avsc"
    item = json.loads(path.read_text())
    item["fields"].append({"name": "brand", "type": ["null", "string"], "default": None, "doc": "Brand."})
    path.write_text(json.dumps(item))
    assert release(current, history) == "v2"
    assert sorted(p.name for p in history.iterdir()) == ["v1", "v2"]

    item["key"] = ["sku", "brand"]
    path.write_text(json.dumps(item))
    with pytest.raises(ValueError, match=r"1 incompatible change\(s\); the first: .*key fields changed"):
        release(current, history)
    assert sorted(p.name for p in history.iterdir()) == ["v1", "v2"]  # nothing half-released


def test_records_of_every_release_stay_readable(tmp_path: Path) -> None:
    current, history = tmp_path / "avro", tmp_path / "released"
    shutil.copytree(SCHEMA_DIR, current)
    release(current, history)
    v1 = SchemaRegistry.load(current)
    name = "io.erpsync.canonical.Item"
    record = {"event_id": "e1", "op": "upsert", "source": {
        "system": "erp", "table": "erp.items", "position": "1", "tx_id": None, "commit_ts_ms": 1, "snapshot": False,
        "topic": "erp.erp.items", "partition": 0, "offset": 1}, "sku": "S", "description": None, "uom": None,
        "safety_stock": 1, "status": "active", "updated_at": None}
    path = current / "item.avsc"
    for version, field in enumerate(("brand", "colour"), 2):
        item = json.loads(path.read_text())
        item["fields"].append({"name": field, "type": ["null", "string"], "default": None, "doc": field})
        path.write_text(json.dumps(item))
        assert release(current, history) == f"v{version}"
    latest = SchemaRegistry.load(current, released=history)
    assert latest.decode(v1.encode(name, record)) == (name, record | {"brand": None, "colour": None})


def test_cli_check_and_release(tmp_path: Path) -> None:
    current, history = tmp_path / "avro", tmp_path / "released"
    shutil.copytree(SCHEMA_DIR, current)

    def erpsync(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "erpsync", "schemas", *args, "--schemas", str(current),
                               "--released", str(history)], capture_output=True, text=True, check=False)

    assert erpsync("check").stdout.strip() == "schemas: compatible with no release, each in its declared mode"
    done = erpsync("release")
    assert done.returncode == 0 and f"released {current} as {history / 'v1'}" in done.stdout
    item = json.loads((current / "item.avsc").read_text())
    item["key"] = ["uom"]
    (current / "item.avsc").write_text(json.dumps(item))
    failed = erpsync("check")
    assert failed.returncode == 1
    assert "incompatible: io.erpsync.canonical.Item (FULL against v1): key fields changed" in failed.stdout
    assert failed.stdout.splitlines()[-1] == "schemas: 1 incompatible change(s) against release v1 (history v1)"
    refused = erpsync("release")
    assert refused.returncode == 1 and "key fields changed" in refused.stderr
    item["compatibility"] = "NONE"
    (current / "item.avsc").write_text(json.dumps(item))
    bad = erpsync("check")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "erpsync schemas check: io.erpsync.canonical.Item: unknown compatibility 'NONE'")


def test_check_of_an_unreleased_schema(tmp_path: Path) -> None:
    """A schema never released has nothing to be compatible with; dropping a released one is a problem."""
    history = [("v1", {"t.R": V1})]
    assert check({"t.R": V1, "t.New": rec(f("a", "int"), name="New")}, history) == []
    assert check({}, history) == ["t.R: released in v1, removed from the current schemas"]
