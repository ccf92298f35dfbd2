"""``erpsync mappings check``: every mapping file validated the way Kafka Connect validates a config.

Two levels:

* **static** (:func:`check_static`, needs only the Avro contract): the file's keys, the canonical
  entity, the system against the entity's owner and the connectors' ``topic.prefix``, every field
  and its type against the entity's Avro field, nullability, key fields, fields the schema cannot
  do without. ``erpsync run`` refuses to start when this fails (:func:`refuse_invalid_mappings`).
* **tables** (:func:`check_tables`): the source table exists, every mapped column exists with a SQL
  type the field type reads as Debezium emits it (a ``decimal:2`` field on a ``numeric(12,4)``
  column would dead-letter rows), and the entity key is the table's primary key (Debezium keys and
  partitions records by it). The tables come from DDL (:func:`reference_catalog`, the reference
  schemas by default) or from a live database's information_schema (``erpsync mappings check --live``).

Every problem is one line naming the file, the key and what is wrong.
"""

from __future__ import annotations

import difflib
import logging
import tomllib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.mapping import FIELD_SPEC_KEYS, IGNORE_FILE, MAPPING_KEYS, field_type_error
from schemas.registry import EntitySchema, SchemaRegistry

logger = logging.getLogger(__name__)

ENVELOPE_FIELDS = frozenset({"event_id", "op", "source"})  # set by the canonicalizer, never mapped

# Mapping field type -> the Avro type (nullable unions aside) its values are encoded as.
_AVRO_TYPE: dict[str, Any] = {
    "string": "string", "enum": "string", "json": "string", "decimal": "string",
    "int": "int", "long": "long", "bool": "boolean",
    "date": {"type": "int", "logicalType": "date"},
    "timestamp": {"type": "long", "logicalType": "timestamp-micros"},
    "timestamp_ms": {"type": "long", "logicalType": "timestamp-micros"},
    "timestamp_us": {"type": "long", "logicalType": "timestamp-micros"},
}

# Mapping field type -> the SQL type families whose Debezium value it reads.
_SQL_FAMILIES: dict[str, frozenset[str]] = {
    "string": frozenset({"string", "json"}), "enum": frozenset({"string"}), "json": frozenset({"json"}),
    "int": frozenset({"int8", "int16", "int32"}), "long": frozenset({"int8", "int16", "int32", "int64"}),
    "bool": frozenset({"bool"}), "decimal": frozenset({"decimal"}), "date": frozenset({"date"}),
    # PostgreSQL timestamptz and MySQL TIMESTAMP arrive as ISO strings with a zone (ZonedTimestamp);
    # PostgreSQL timestamp and MySQL DATETIME as epoch integers: millis up to precision 3, else micros.
    "timestamp": frozenset({"timestamptz"}), "timestamp_ms": frozenset({"timestamp"}),
    "timestamp_us": frozenset({"timestamp"}),
}


@dataclass(frozen=True)
class Problem:
    file: str
    key: str  # where in the file, e.g. "system" or "fields.safety_stock"
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str  # as declared, for messages, e.g. "numeric(12,4)"
    family: str  # string, json, int8/16/32/64, decimal, bool, date, timestamptz, timestamp, other
    scale: int | None = None  # decimals
    precision: int | None = None  # fractional seconds of timestamps (None: the database's default)


@dataclass(frozen=True)
class Table:
    name: str  # "<schema or database>.<table>"
    columns: dict[str, Column]
    primary_key: tuple[str, ...] = ()


@dataclass(frozen=True)
class Catalog:
    """Source tables by "<schema or database>.<table>", and where they were read from (for messages)."""

    tables: dict[str, Table]
    source: str
    systems: frozenset[str] | None = None  # systems whose tables it holds; None: every system
    missing: dict[str, str] = field(default_factory=dict)  # system -> why its tables could not be read


# ------------------------------------------------------------------ static checks


def check_static(registry: SchemaRegistry, directory: Path, systems: Collection[str] | None = None) -> list[Problem]:
    """Problems found with the Avro contract alone; ``systems``: the connectors' topic prefixes, if known."""
    entities = registry.entities()
    problems: list[Problem] = []
    topics: dict[str, str] = {}
    for path in sorted(directory.glob("*.toml")):
        try:
            doc = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            problems.append(Problem(path.name, "-", f"not valid TOML: {exc}"))
            continue
        if path.name == IGNORE_FILE:
            problems += _check_ignore(path.name, doc)
            continue
        problems += _check_file(path.name, doc, entities, registry, systems)
        topic = f"{doc.get('system')}.{doc.get('table')}"
        if topic in topics:
            problems.append(Problem(path.name, "table", f"{topic} is mapped by {topics[topic]} already"))
        topics.setdefault(topic, path.name)
    if not topics:
        problems.append(Problem(directory.name, "-", f"no mapping files (*.toml) in {directory}"))
    return problems


def _check_ignore(name: str, doc: Mapping[str, Any]) -> list[Problem]:
    problems = [Problem(name, k, "unknown key; expected: tables") for k in doc if k != "tables"]
    for topic in doc.get("tables", ()):
        if not isinstance(topic, str) or topic.count(".") != 2:
            problems.append(Problem(name, "tables", f"{topic!r} is not a raw topic '<system>.<schema>.<table>'"))
    return problems


def _check_file(name: str, doc: Mapping[str, Any], entities: Mapping[str, EntitySchema], registry: SchemaRegistry,
                systems: Collection[str] | None) -> list[Problem]:
    problems = [Problem(name, k, f"unknown key; expected one of {', '.join(sorted(MAPPING_KEYS))}")
                for k in doc if k not in MAPPING_KEYS]
    missing = [k for k in ("system", "table", "entity", "fields") if k not in doc]
    problems += [Problem(name, k, "missing") for k in missing]
    if missing:
        return problems
    system, table, entity_name = doc["system"], doc["table"], doc["entity"]
    if not isinstance(table, str) or table.count(".") != 1:
        problems.append(Problem(name, "table", f"{table!r} is not '<schema or database>.<table>'"))
    if systems is not None and system not in systems:
        problems.append(Problem(name, "system", f"no connector captures system {system!r} (the topic.prefix of the "
                                                f"connectors: {', '.join(sorted(systems))}): its topic "
                                                f"{system}.{table} would never receive a record"))
    entity = entities.get(str(entity_name))
    if entity is None:
        close = difflib.get_close_matches(str(entity_name), entities, n=1)
        return [*problems, Problem(name, "entity", f"unknown canonical entity {entity_name!r}"
                                   + (f" (did you mean {close[0]!r}?)" if close else "")
                                   + "; an entity is a schemas/avro/<entity>.avsc with an \"entity\" attribute")]
    non_owner = bool(doc.get("non_owner", False))
    if system != entity.owner and not non_owner:
        problems.append(Problem(name, "system", f"{system!r} does not own {entity.entity} (its owner is "
                                                f"{entity.owner!r}, the \"owner\" of its schema): every row would "
                                                "become a sor_violation exception, none applied; fix the system, or "
                                                "set non_owner = true if that is the intent"))
    if system == entity.owner and non_owner:
        problems.append(Problem(name, "non_owner", f"{system!r} owns {entity.entity}; remove non_owner"))
    fields = doc["fields"] if isinstance(doc["fields"], dict) else {}
    avro_fields = {f["name"]: f for f in registry.schema(entity.name).definition["fields"]}
    for field_name, raw_spec in fields.items():
        problems += _check_field(name, entity, avro_fields, field_name, raw_spec)
    for key in entity.key:
        if key not in fields:
            problems.append(Problem(name, f"fields.{key}", f"key field of {entity.entity} not mapped"))
    for avro_name, avro_field in avro_fields.items():
        if avro_name not in fields and avro_name not in ENVELOPE_FIELDS and "default" not in avro_field:
            problems.append(Problem(name, f"fields.{avro_name}", f"not mapped, and {entity.name} gives it no "
                                                                 "default: every record would fail to encode"))
    mapped_columns = {(s.get("from", n) if isinstance(s, dict) else n) for n, s in fields.items()}
    for column in doc.get("toastable", ()):
        if column not in mapped_columns:
            problems.append(Problem(name, "toastable", f"column {column!r} is not mapped"))
    return problems


def _check_field(name: str, entity: EntitySchema, avro_fields: Mapping[str, Any], field_name: str,
                 raw_spec: Any) -> list[Problem]:
    where = f"fields.{field_name}"
    if field_name in ENVELOPE_FIELDS:
        return [Problem(name, where, "set by the canonicalizer from the source coordinates; do not map it")]
    if field_name not in avro_fields:
        close = difflib.get_close_matches(field_name, [n for n in avro_fields if n not in ENVELOPE_FIELDS], n=1)
        return [Problem(name, where, f"not a field of {entity.name}" + (f" (did you mean {close[0]!r}?)" if close
                                                                        else ""))]
    spec = {"type": raw_spec} if isinstance(raw_spec, str) else raw_spec
    if not isinstance(spec, dict) or "type" not in spec:
        return [Problem(name, where, "expected \"<type>\" or { type = ..., ... }")]
    problems = [Problem(name, f"{where}.{k}", f"unknown key; expected one of {', '.join(sorted(FIELD_SPEC_KEYS))}")
                for k in spec if k not in FIELD_SPEC_KEYS]
    error = field_type_error(spec)
    if error:
        return [*problems, Problem(name, where, error)]
    kind = str(spec["type"]).split(":", 1)[0]
    declared = avro_fields[field_name]["type"]
    nullable = isinstance(declared, list) and "null" in declared
    value_types = [t for t in declared if t != "null"] if isinstance(declared, list) else [declared]
    if _AVRO_TYPE[kind] not in value_types:
        problems.append(Problem(name, where, f"type {spec['type']!r} is encoded as {_label(_AVRO_TYPE[kind])}, but "
                                             f"{entity.name}.{field_name} is {_label(declared)}"))
    required = bool(spec.get("required", False)) or field_name in entity.key
    if not required and not nullable:
        problems.append(Problem(name, where, f"may be null (not required), but {entity.name}.{field_name} is not "
                                             "nullable: set required = true, or make the schema field nullable"))
    return problems


def _label(avro_type: Any) -> str:
    if isinstance(avro_type, dict):
        return f"{avro_type['type']}/{avro_type['logicalType']}" if "logicalType" in avro_type else str(avro_type)
    if isinstance(avro_type, list):
        return "[" + ", ".join(_label(t) for t in avro_type) + "]"
    return str(avro_type)


# ------------------------------------------------------------------ source tables


def check_tables(registry: SchemaRegistry, directory: Path, catalog: Catalog) -> list[Problem]:
    """Problems of the mapped source tables against ``catalog`` (files the static check rejects are skipped)."""
    entities = registry.entities()
    problems: list[Problem] = []
    for path in sorted(directory.glob("*.toml")):
        if path.name == IGNORE_FILE:
            continue
        try:
            doc = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue  # reported by the static check
        entity, table_name, system = entities.get(str(doc.get("entity"))), doc.get("table"), doc.get("system")
        if entity is None or not isinstance(table_name, str) or not isinstance(doc.get("fields"), dict):
            continue
        if catalog.systems is not None and system not in catalog.systems:
            why = catalog.missing.get(str(system), f"{catalog.source} has no tables of system {system!r}")
            problems.append(Problem(path.name, "table", f"cannot check {table_name}: {why}"))
            continue
        table = catalog.tables.get(table_name)
        if table is None:
            close = difflib.get_close_matches(table_name, catalog.tables, n=1)
            problems.append(Problem(path.name, "table", f"no table {table_name} in {catalog.source}"
                                                        + (f" (did you mean {close[0]}?)" if close else "")))
            continue
        columns: dict[str, str] = {}
        for field_name, raw_spec in doc["fields"].items():
            spec = {"type": raw_spec} if isinstance(raw_spec, str) else raw_spec
            if not isinstance(spec, dict) or field_type_error(spec) is not None:
                continue
            column_name = str(spec.get("from", field_name))
            columns[field_name] = column_name
            column = table.columns.get(column_name)
            if column is None:
                close = difflib.get_close_matches(column_name, table.columns, n=1)
                problems.append(Problem(path.name, f"fields.{field_name}", f"no column {column_name} in {table_name}"
                                        + (f" (did you mean {close[0]}?)" if close else "")))
                continue
            error = _column_error(str(spec["type"]), column)
            if error:
                problems.append(Problem(path.name, f"fields.{field_name}", f"{table_name}.{column_name} is "
                                                                           f"{column.sql_type}: {error}"))
        key_columns = tuple(columns.get(k, k) for k in entity.key)
        if table.primary_key and set(key_columns) != set(table.primary_key):
            problems.append(Problem(path.name, "table", f"the key of {entity.entity} ({', '.join(key_columns)}) is not "
                                                        f"the primary key of {table_name} "
                                                        f"({', '.join(table.primary_key)}): Debezium keys and "
                                                        "partitions records by the primary key"))
    return problems


def _column_error(type_name: str, column: Column) -> str | None:
    kind = type_name.split(":", 1)[0]
    if column.family not in _SQL_FAMILIES[kind]:
        return f"field type {type_name!r} does not read it"
    if kind == "decimal" and column.scale is not None and column.scale != int(type_name.split(":", 1)[1]):
        return f"its scale is {column.scale}: use decimal:{column.scale}"
    if kind in ("timestamp_ms", "timestamp_us"):
        micros = column.precision is None or column.precision > 3
        if micros != (kind == "timestamp_us"):
            return (f"Debezium sends epoch {'micro' if micros else 'milli'}seconds for it: use "
                    f"{'timestamp_us' if micros else 'timestamp_ms'}")
    return None


def reference_catalog(paths: Iterable[Path]) -> Catalog:
    """The tables the DDL files define (PostgreSQL for ``*.postgres.sql``, else MySQL/MariaDB).

    Parsed with sqlglot; a table without a schema takes the database of the last ``USE``.
    """
    import sqlglot  # noqa: PLC0415 - only the check needs a SQL parser
    from sqlglot import exp  # noqa: PLC0415

    tables: dict[str, Table] = {}
    files = sorted(paths)
    for path in files:
        dialect = "postgres" if path.name.endswith(".postgres.sql") else "mysql"
        database = None
        for statement in sqlglot.parse(path.read_text(), read=dialect):
            if isinstance(statement, exp.Use):
                database = statement.this.name
            if not (isinstance(statement, exp.Create) and statement.kind == "TABLE"):
                continue
            schema = statement.this
            name = f"{schema.this.db or database}.{schema.this.name}"
            columns: dict[str, Column] = {}
            primary: list[str] = []
            for item in schema.expressions:
                if isinstance(item, exp.ColumnDef):
                    kind = item.args["kind"]
                    args = [int(e.name) for e in kind.expressions if e.name.isdigit()]
                    columns[item.name] = _column(item.name, kind.sql(dialect).lower(), kind.this.name, args)
                    if any(isinstance(c.kind, exp.PrimaryKeyColumnConstraint) for c in item.constraints):
                        primary.append(item.name)
                elif isinstance(item, exp.PrimaryKey):
                    primary = [e.name for e in item.expressions]
            tables[name] = Table(name, columns, tuple(primary))
    return Catalog(tables, "the reference schemas (" + ", ".join(p.name for p in files) + ")")


def _column(name: str, sql_type: str, type_name: str, args: list[int]) -> Column:
    """A column from its type name as sqlglot or information_schema spells it (upper or lower case)."""
    t = type_name.upper().replace(" ", "_")
    if t in ("TEXT", "VARCHAR", "CHAR", "CHARACTER_VARYING", "CHARACTER", "BPCHAR", "NVARCHAR", "NCHAR",
             "MEDIUMTEXT", "LONGTEXT", "TINYTEXT", "ENUM"):
        return Column(name, sql_type, "string")
    if t in ("JSON", "JSONB"):
        return Column(name, sql_type, "json")
    ints = {"TINYINT": "int8", "SMALLINT": "int16", "MEDIUMINT": "int32", "INT": "int32", "INTEGER": "int32",
            "BIGINT": "int64"}
    if t in ints:
        return Column(name, sql_type, ints[t])
    if t in ("DECIMAL", "NUMERIC"):
        return Column(name, sql_type, "decimal", scale=args[1] if len(args) > 1 else (0 if args else None))
    if t in ("BOOLEAN", "BOOL"):
        return Column(name, sql_type, "bool")
    if t == "DATE":
        return Column(name, sql_type, "date")
    if t in ("TIMESTAMPTZ", "TIMESTAMP_WITH_TIME_ZONE"):
        return Column(name, sql_type, "timestamptz")
    if t in ("TIMESTAMP", "TIMESTAMP_WITHOUT_TIME_ZONE", "DATETIME"):
        return Column(name, sql_type, "timestamp", precision=args[0] if args else None)
    return Column(name, sql_type, "other")


def information_schema_table(name: str, rows: Iterable[tuple[str, str, int | None, int | None, str]],
                             primary_key: Iterable[str]) -> Table:
    """A table from information_schema.columns rows and its primary key columns.

    Rows: (column, data_type, numeric_scale, datetime_precision, the full type for messages).
    """
    columns = {}
    for column, data_type, scale, precision, full_type in rows:
        c = _column(column, full_type, data_type, [])
        if c.family == "decimal":
            c = Column(column, full_type, "decimal", scale=scale)
        elif c.family == "timestamp":
            # PostgreSQL's and MariaDB's default timestamp precisions: 6 and 0.
            c = Column(column, full_type, "timestamp", precision=precision)
        columns[column] = c
    return Table(name, columns, tuple(primary_key))


# ------------------------------------------------------------------ at start


def refuse_invalid_mappings(registry: SchemaRegistry, directory: Path) -> None:
    """Exit (status 1, one line on stderr) when a mapping fails the static check; for ``erpsync run``."""
    problems = check_static(registry, directory)
    for problem in problems:
        logger.error("mapping check: %s", problem)
    if problems:
        more = f" (and {len(problems) - 1} more; run `erpsync mappings check`)" if len(problems) > 1 else ""
        raise SystemExit(f"erpsync: refusing to start, mapping check failed: {directory / problems[0].file}: "
                         f"{problems[0].key}: {problems[0].message}{more}")
