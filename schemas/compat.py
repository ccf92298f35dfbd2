"""Schema evolution: the compatibility modes of schema registries, checked against released history.

Each top-level record schema declares its mode in its .avsc (``"compatibility": "FULL_TRANSITIVE"``);
without one it is :data:`DEFAULT_MODE`. The modes mean what they mean in Confluent's and Apicurio's
registries:

* ``BACKWARD``: a reader with the new schema reads data written with the last release;
* ``FORWARD``: a reader with the last release reads data written with the new schema;
* ``FULL``: both; the ``_TRANSITIVE`` variants check against every release, not only the last.

Whether a reader can read a writer's data is decided by the ``avro`` package's
``avro.compatibility`` checker (Avro schema resolution, the implementation Python schema registries
use); this module only narrows its verdict down to the field at fault. On top of resolution,
erpsync treats as breaking, in every mode:

* a change of an entity's key fields (``"key"``) or of its entity name (its topic): keys are how
  compacted topics, fences and downstream joins address a row;
* a change of a field's logical type (``timestamp-millis`` to ``timestamp-micros`` resolves, and
  reads every time 1000 times off);
* a field removed and another of the same type added in one record, without an alias linking them:
  every mode passes that rename (both fields are nullable with a default) and readers silently get
  null. Add ``"aliases": ["old_name"]`` to the new field, or release the removal and the addition
  separately. Checked against the last release only.

Released versions live in ``released/v1``, ``released/v2``, ... (``erpsync schemas release`` cuts
the next one), each a copy of ``avro/`` as it was released.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import avro.schema
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    SchemaIncompatibilityType,
    lookup_writer_field,
)

from schemas.registry import read_history, read_schema_files, released_versions

logger = logging.getLogger(__name__)

MODE_ATTRIBUTE = "compatibility"


class Mode(StrEnum):
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"

    @property
    def transitive(self) -> bool:
        return self.endswith("_TRANSITIVE")

    @property
    def backward(self) -> bool:
        return self.startswith(("BACKWARD", "FULL"))

    @property
    def forward(self) -> bool:
        return self.startswith(("FORWARD", "FULL"))


# Channel teams and downstream jobs upgrade on their own schedule, in both directions: FULL.
DEFAULT_MODE = Mode.FULL

History = Sequence[tuple[str, Mapping[str, dict[str, Any]]]]
"""Released versions, oldest first: (label such as "v2", {schema full name: definition})."""


def mode_of(definition: Mapping[str, Any]) -> Mode:
    """The compatibility mode a schema declares; ValueError naming the schema for an unknown one."""
    declared = definition.get(MODE_ATTRIBUTE, DEFAULT_MODE.value)
    try:
        return Mode(declared)
    except ValueError:
        raise ValueError(f"{_fullname(definition)}: unknown {MODE_ATTRIBUTE} {declared!r}; expected one of "
                         f"{', '.join(m.value for m in Mode)}") from None


# ------------------------------------------------------------------ released history


def release(current: Path, root: Path) -> str:
    """Copy ``current`` into the next ``root/vN`` after checking it; returns the new label.

    Refuses (ValueError) an incompatible contract or one identical to the last release.
    """
    history = read_history(root)
    problems = check(read_schema_files(current), history)
    if problems:
        raise ValueError(f"{len(problems)} incompatible change(s); the first: {problems[0]}")
    if history and _contract(current) == _contract(released_versions(root)[-1][1]):
        raise ValueError(f"nothing to release: {current} is identical to {history[-1][0]}")
    label = f"v{len(history) + 1}"
    target = root / label
    target.mkdir(parents=True)
    for path in sorted(current.glob("*.avsc")):
        shutil.copy2(path, target / path.name)
    logger.info("released %s as %s", current, target)
    return label


def _contract(directory: Path) -> dict[str, Any]:
    return {p.name: json.loads(p.read_text()) for p in sorted(directory.glob("*.avsc"))}


# ------------------------------------------------------------------ checks


def check_directory(current: Path, released_root: Path) -> list[str]:
    """Check the schemas in ``current`` against the release history under ``released_root``."""
    history = read_history(released_root)
    problems = check(read_schema_files(current), history)
    logger.info("checked %d schemas against %d release(s) under %s: %d problems",
                len(history[-1][1]) if history else 0, len(history), released_root, len(problems))
    return problems


def check(current: Mapping[str, dict[str, Any]], history: History) -> list[str]:
    """Every problem of ``current`` against ``history``; a schema of the last release dropped is one."""
    problems: list[str] = []
    if not history:
        return problems
    last_label, last = history[-1]
    for name in sorted(last):
        if name not in current:
            problems.append(f"{name}: released in {last_label}, removed from the current schemas")
    for name, definition in sorted(current.items()):
        versions = [(label, schemas[name]) for label, schemas in history if name in schemas]
        problems.extend(check_schema(definition, versions))
    return problems


def check_schema(new: dict[str, Any], versions: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Problems of one schema against its released versions (oldest first) in its declared mode."""
    if not versions:
        return []  # never released: nothing can depend on it yet
    mode = mode_of(new)
    name = _fullname(new)
    new_parsed = _parse(new)
    problems: list[str] = []
    for label, old in versions if mode.transitive else versions[-1:]:
        where = f"{name} ({mode.value} against {label})"
        old_parsed = _parse(old)
        if mode.backward:
            problems += [f"{where}: {p}" for p in _resolve(new_parsed, old_parsed, name, f"data written with {label}")]
        if mode.forward:
            problems += [f"{where}: {p}" for p in _resolve(old_parsed, new_parsed, name, f"readers of {label}")]
        problems += [f"{where}: {p}" for p in _entity_changes(old, new) + _logical_type_changes(old, new, name)]
    label, last = versions[-1]
    problems += [f"{name} (against {label}): {p}" for p in _unaliased_renames(last, new, name)]
    return problems


def check_backward_compatible(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Problems reading data written with ``old`` using ``new`` (Avro resolution plus logical types)."""
    name = _fullname(new)
    problems = _resolve(_parse(new), _parse(old), name, "data written with the old schema")
    return problems + _logical_type_changes(old, new, name)


# ------------------------------------------------------------------ Avro resolution, narrowed down


def _resolve(reader: avro.schema.Schema, writer: avro.schema.Schema, path: str, other: str) -> list[str]:
    """Why ``reader`` cannot read ``writer``'s data, per field; [] when avro.compatibility says it can.

    ``other`` names the side that is not the new schema, for the messages.
    """
    verdict = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)  # type: ignore[no-untyped-call]
    if verdict.compatibility is not SchemaCompatibilityType.incompatible:
        return []
    narrowed = _narrow(reader, writer, path, other)
    if narrowed:
        return narrowed
    if len(verdict.incompatibilities) == 1 and len(verdict.messages) == 1:
        [message] = verdict.messages
        return [f"{path}: {_EXPLAIN[verdict.incompatibilities[0]].format(message=message, other=other)}"]
    return [f"{path}: {'; '.join(sorted(verdict.messages))}"]


# How avro.compatibility's findings read where the pair itself is at fault.
_EXPLAIN = {
    SchemaIncompatibilityType.name_mismatch: "named type renamed without an alias ({message})",
    SchemaIncompatibilityType.fixed_size_mismatch: "fixed size changed ({message})",
    SchemaIncompatibilityType.missing_enum_symbols:
        "enum symbols {message} of {other} are unknown to the reader, whose enum has no default",
    SchemaIncompatibilityType.type_mismatch: "{message}",
    SchemaIncompatibilityType.missing_union_branch: "{message}",
    SchemaIncompatibilityType.reader_field_missing_default_value: "field {message} has no default",
}


def _narrow(reader: avro.schema.Schema, writer: avro.schema.Schema, path: str, other: str) -> list[str]:
    """The incompatible parts below this pair; [] when the pair itself is at fault."""
    S = avro.schema  # noqa: N806
    if isinstance(reader, S.RecordSchema) and isinstance(writer, S.RecordSchema) and reader.name == writer.name:
        problems: list[str] = []
        for rf in reader.fields:
            wf = lookup_writer_field(writer_schema=writer, reader_field=rf)
            if wf is None:
                if not rf.has_default:
                    problems.append(
                        f"{path}.{rf.name}: added without a default ({other} lack it)" if other.startswith("data")
                        else f"{path}.{rf.name}: removed, but {other} require it (no default there)")
                continue
            problems += _resolve(rf.type, wf.type, f"{path}.{rf.name}", other)
        return problems
    if isinstance(writer, S.UnionSchema):  # every branch the writer may have used must be readable
        return [p for b in writer.schemas for p in _resolve(reader, b, f"{path}<{_label(b)}>", other)]
    if isinstance(reader, S.UnionSchema):
        same = [b for b in reader.schemas if b.type == writer.type and _label(b) == _label(writer)]
        if same:
            return _resolve(same[0], writer, path, other)
        return [f"{path}: {_label(writer)} matches no branch of the union {[_label(b) for b in reader.schemas]}"]
    if isinstance(reader, S.ArraySchema) and isinstance(writer, S.ArraySchema):
        return _resolve(reader.items, writer.items, path + "[]", other)
    if isinstance(reader, S.MapSchema) and isinstance(writer, S.MapSchema):
        return _resolve(reader.values, writer.values, path + "{}", other)
    return []


def _label(schema: avro.schema.Schema) -> str:
    return str(schema.name) if isinstance(schema, avro.schema.NamedSchema) else str(schema.type)


def _parse(definition: dict[str, Any]) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(_qualified_aliases(definition, None)))


def _qualified_aliases(node: Any, namespace: str | None) -> Any:
    """Copy with named types' aliases fully qualified, as the Avro specification resolves them.

    ``avro.compatibility`` compares the writer's full name with the reader's aliases as written, so
    an unqualified alias would never match.
    """
    if isinstance(node, list):
        return [_qualified_aliases(b, namespace) for b in node]
    if not isinstance(node, dict):
        return node
    out = dict(node)
    if node.get("type") in ("record", "error", "enum", "fixed"):
        full = _fullname(node, namespace)
        namespace = full.rpartition(".")[0] or None
        if "aliases" in node:
            out["aliases"] = [a if "." in a or not namespace else f"{namespace}.{a}" for a in node["aliases"]]
        if "fields" in node:
            out["fields"] = [dict(f, type=_qualified_aliases(f["type"], namespace)) for f in node["fields"]]
        return out
    for child in ("items", "values", "type"):
        if child in node:
            out[child] = _qualified_aliases(node[child], namespace)
    return out


# ------------------------------------------------------------------ erpsync's own rules


def _entity_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    problems = []
    if "entity" in old and old.get("entity") != new.get("entity"):
        problems.append(f"entity changed from {old.get('entity')!r} to {new.get('entity')!r} (its topic changes)")
    if "key" in old and list(old.get("key", ())) != list(new.get("key", ())):
        problems.append(f"key fields changed from {list(old['key'])} to {list(new.get('key', ()))}: "
                        "a new key is a new entity (new schema, new topic), not an evolution")
    return problems


def _logical_type_changes(old: dict[str, Any], new: dict[str, Any], name: str) -> list[str]:
    before: dict[str, set[str]] = {}
    for path, logical in _logical_types(old, name, None):
        before.setdefault(path, set()).add(logical)
    after: dict[str, set[str]] = {}
    for path, logical in _logical_types(new, name, None, aliases=True):
        after.setdefault(path, set()).add(logical)
    return [f"{path}: logical type changed from {'/'.join(sorted(before[path]))} to {'/'.join(sorted(lt))}"
            for path, lt in after.items() if path in before and before[path] != lt]


def _logical_types(node: Any, path: str, namespace: str | None, *, aliases: bool = False,
                   seen: frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """(field path, logical type or "none") of every leaf; with aliases, each old name of a field too."""
    if isinstance(node, list):
        for branch in node:
            yield from _logical_types(branch, path, namespace, aliases=aliases, seen=seen)
        return
    if isinstance(node, str):
        if node != "null":  # a primitive, or a named type already walked where it was defined
            yield path, "none"
        return
    kind = node.get("type")
    if kind in ("record", "error"):
        full = _fullname(node, namespace)
        if full in seen:
            return
        inner = full.rpartition(".")[0] or None
        for f in node["fields"]:
            for field_name in [f["name"], *(f.get("aliases", []) if aliases else [])]:
                yield from _logical_types(f["type"], f"{path}.{field_name}", inner, aliases=aliases, seen=seen | {full})
    elif kind == "array":
        yield from _logical_types(node["items"], path + "[]", namespace, aliases=aliases, seen=seen)
    elif kind == "map":
        yield from _logical_types(node["values"], path + "{}", namespace, aliases=aliases, seen=seen)
    elif kind in ("enum", "fixed"):
        yield path, "none"
    else:
        logical = node.get("logicalType", "none")
        if logical == "decimal":
            logical = f"decimal({node.get('precision')},{node.get('scale', 0)})"
        yield path, str(logical)


def _unaliased_renames(old: dict[str, Any], new: dict[str, Any], name: str) -> list[str]:
    """Fields of a record removed while another of the same type is added, with no alias between them."""
    old_records = dict(_records(old, name, None))
    problems = []
    for path, record in _records(new, name, None):
        before = old_records.get(path)
        if before is None:
            continue
        old_fields = {f["name"]: f for f in before["fields"]}
        new_names = {f["name"] for f in record["fields"]}
        linked = {a for f in record["fields"] for a in f.get("aliases", [])}
        removed = {n: f for n, f in old_fields.items() if n not in new_names and n not in linked}
        for f in record["fields"]:
            if f["name"] in old_fields or set(f.get("aliases", [])) & set(old_fields):
                continue
            same_type = sorted(n for n, of in removed.items() if _type_text(of["type"]) == _type_text(f["type"]))
            if same_type:
                problems.append(
                    f"{path}.{f['name']}: added while {', '.join(same_type)} of the same type was removed: "
                    f"a rename without an alias loses the data for readers; add \"aliases\": {same_type[:1]} "
                    "to the new field, or release the removal and the addition separately")
    return problems


def _records(node: Any, path: str, namespace: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, definition) of every record defined in ``node``."""
    if isinstance(node, list):
        for branch in node:
            yield from _records(branch, path, namespace)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind in ("record", "error"):
            yield path, node
            inner = _fullname(node, namespace).rpartition(".")[0] or None
            for f in node["fields"]:
                yield from _records(f["type"], f"{path}.{f['name']}", inner)
        elif kind == "array":
            yield from _records(node["items"], path + "[]", namespace)
        elif kind == "map":
            yield from _records(node["values"], path + "{}", namespace)


def _type_text(schema: Any) -> str:
    """A field type without its docs, for comparing two fields' types."""
    def strip(node: Any) -> Any:
        if isinstance(node, list):
            return [strip(n) for n in node]
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("doc", "aliases")}
        return node
    return json.dumps(strip(schema), sort_keys=True)


def _fullname(named: Mapping[str, Any], namespace: str | None = None) -> str:
    name: str = named.get("name", "?")
    if "." in name:
        return name
    namespace = named.get("namespace", namespace)
    return f"{namespace}.{name}" if namespace else name
