"""Backward-compatibility check between schema versions (spec: schemas evolve only compatibly).

Backward compatible means a reader using the new schema can read every record written with the
old one, by the Avro schema resolution rules. That is what consumers need when producers and
compacted topics still hold old records after an upgrade.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from schemas.registry import PRIMITIVES, read_schema_files

logger = logging.getLogger(__name__)

# Writer type -> reader types it may be read as (Avro specification, "Schema Resolution").
_PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}
_NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})
_COMPLEX_KINDS = _NAMED_KINDS | {"array", "map"}


def check_backward_compatible(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Problems reading data written with ``old`` using ``new`` (reader = new, writer = old).

    Both are self-contained schemas (named types defined before use). An empty list means compatible.
    """
    return _Resolver(old, new).check(_Node(old, None), _Node(new, None), _fullname(_Node(new, None)))


def check_directory(current: Path, released: Path) -> list[str]:
    """Check every released schema against its current version; a schema dropped is a problem."""
    old_schemas = read_schema_files(released)
    new_schemas = read_schema_files(current)
    problems: list[str] = []
    for name, old in sorted(old_schemas.items()):
        if name not in new_schemas:
            problems.append(f"{name}: released schema removed from {current}")
        else:
            problems.extend(check_backward_compatible(old, new_schemas[name]))
    logger.info("checked %d released schemas against %s: %d problems", len(old_schemas), current,
                len(problems))
    return problems


class _Node:
    """A schema node with the namespace that unqualified names inside it resolve against."""

    __slots__ = ("schema", "namespace")

    def __init__(self, schema: Any, namespace: str | None) -> None:
        self.schema = schema
        self.namespace = namespace


class _Resolver:
    """Walks a writer (old) and a reader (new) schema side by side, collecting what cannot resolve."""

    def __init__(self, writer: dict[str, Any], reader: dict[str, Any]) -> None:
        self._writer_names = _named_types(writer)
        self._reader_names = _named_types(reader)
        self._checked: set[tuple[str, str]] = set()  # record pairs already compared (recursive types)

    def check(self, w: _Node, r: _Node, path: str) -> list[str]:
        w = _deref(w, self._writer_names)
        r = _deref(r, self._reader_names)
        if isinstance(w.schema, list):  # every branch the writer may have used must be readable
            return [p for b in w.schema for p in self.check(_Node(b, w.namespace), r, f"{path}<{_label(b)}>")]
        if isinstance(r.schema, list):
            branches = [_deref(_Node(b, r.namespace), self._reader_names) for b in r.schema]
            exact = [b for b in branches if self._matches(w, b, promote=False)]
            promoted = [b for b in branches if self._matches(w, b, promote=True)]
            if not exact and not promoted:
                return [f"{path}: writer type {_label(w.schema)} matches no branch of reader union "
                        f"{[_label(b) for b in r.schema]}"]
            return self.check(w, (exact or promoted)[0], path)

        wkind, rkind = _kind(w.schema), _kind(r.schema)
        if _logical(w.schema) != _logical(r.schema):
            return [f"{path}: logical type changed from {_logical(w.schema)} to {_logical(r.schema)}"]
        if wkind != rkind:
            if rkind in _PROMOTIONS.get(wkind, frozenset()):
                return []
            return [f"{path}: type changed from {_label(w.schema)} to {_label(r.schema)}"]
        if wkind in _NAMED_KINDS and not self._same_name(w, r):
            return [f"{path}: {wkind} renamed from {_fullname(w)} to {_fullname(r)} (no alias)"]
        if wkind in ("record", "error"):
            return self._check_record(w, r, path)
        if wkind == "enum":
            removed = [s for s in w.schema["symbols"] if s not in r.schema["symbols"]]
            if removed and "default" not in r.schema:
                return [f"{path}: enum symbols {removed} removed and the enum has no default"]
        if wkind == "fixed" and w.schema["size"] != r.schema["size"]:
            return [f"{path}: fixed size changed from {w.schema['size']} to {r.schema['size']}"]
        if wkind == "array":
            items = _Node(w.schema["items"], w.namespace), _Node(r.schema["items"], r.namespace)
            return self.check(*items, path + "[]")
        if wkind == "map":
            values = _Node(w.schema["values"], w.namespace), _Node(r.schema["values"], r.namespace)
            return self.check(*values, path + "{}")
        return []

    def _check_record(self, w: _Node, r: _Node, path: str) -> list[str]:
        pair = (_fullname(w), _fullname(r))
        if pair in self._checked:
            return []
        self._checked.add(pair)
        w_ns, r_ns = _fullname(w).rpartition(".")[0] or None, _fullname(r).rpartition(".")[0] or None
        writer_fields = {f["name"]: f for f in w.schema["fields"]}
        problems: list[str] = []
        for rf in r.schema["fields"]:
            names = [rf["name"], *rf.get("aliases", [])]
            wf = next((writer_fields[n] for n in names if n in writer_fields), None)
            if wf is None:
                if "default" not in rf:
                    problems.append(f"{path}.{rf['name']}: field added without a default")
                continue
            field_path = f"{path}.{rf['name']}"
            problems.extend(self.check(_Node(wf["type"], w_ns), _Node(rf["type"], r_ns), field_path))
        return problems  # writer fields the reader no longer has are skipped: fine

    def _matches(self, w: _Node, r: _Node, *, promote: bool) -> bool:
        """Whether a reader union branch is the one Avro resolution picks for this writer type."""
        wkind, rkind = _kind(w.schema), _kind(r.schema)
        if _logical(w.schema) != _logical(r.schema):
            return False
        if wkind != rkind:
            return promote and rkind in _PROMOTIONS.get(wkind, frozenset())
        return wkind not in _NAMED_KINDS or self._same_name(w, r)

    @staticmethod
    def _same_name(w: _Node, r: _Node) -> bool:
        # Avro compares unqualified names, or the reader's aliases with the writer's full name.
        writer, reader = _fullname(w), _fullname(r)
        reader_ns = reader.rpartition(".")[0] or None
        aliases = {_qualify(a, reader_ns) for a in r.schema.get("aliases", [])}
        return writer.rpartition(".")[2] == reader.rpartition(".")[2] or writer in aliases


def _named_types(
    schema: Any, namespace: str | None = None, found: dict[str, _Node] | None = None
) -> dict[str, _Node]:
    """Every named type defined in ``schema``, by full name."""
    found = {} if found is None else found
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, namespace, found)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in _NAMED_KINDS:
            full = _qualify(schema["name"], schema.get("namespace", namespace))
            found[full] = _Node(schema, full.rpartition(".")[0] or None)
            for f in schema.get("fields", []):
                _named_types(f["type"], full.rpartition(".")[0] or None, found)
        elif kind == "array":
            _named_types(schema["items"], namespace, found)
        elif kind == "map":
            _named_types(schema["values"], namespace, found)
        else:
            _named_types(kind, namespace, found)
    return found


def _deref(node: _Node, names: Mapping[str, _Node]) -> _Node:
    """Follow a reference to a named type, or unwrap ``{"type": "string"}``, to the definition."""
    schema = node.schema
    if isinstance(schema, dict) and schema["type"] not in _COMPLEX_KINDS and "logicalType" not in schema:
        return _deref(_Node(schema["type"], node.namespace), names)
    if isinstance(schema, str) and schema not in PRIMITIVES:
        full = _qualify(schema, node.namespace)
        if full not in names:
            raise ValueError(f"reference to undefined type {schema!r}")
        return names[full]
    return node


def _qualify(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _fullname(node: _Node) -> str:
    return _qualify(node.schema["name"], node.schema.get("namespace", node.namespace))


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return str(schema["type"])
    return str(schema)


def _logical(schema: Any) -> str:
    if not isinstance(schema, dict) or "logicalType" not in schema:
        return "none"
    if schema["logicalType"] == "decimal":
        return f"decimal({schema.get('precision')},{schema.get('scale', 0)})"
    return str(schema["logicalType"])


def _label(schema: Any) -> str:
    if isinstance(schema, dict):
        if schema.get("type") in _NAMED_KINDS:
            return str(schema["name"])
        if "logicalType" in schema:
            return f"{schema['type']}/{schema['logicalType']}"
        return str(schema.get("type"))
    if isinstance(schema, list):
        return "union"
    return str(schema)
