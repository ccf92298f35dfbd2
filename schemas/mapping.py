"""Declarative source-table mappings (``mappings/*.toml``): load, validate, convert rows.

A mapping turns one Debezium row (a JSON object) into the fields of a canonical entity. Each field
is compiled once into a small converter, so the hot path is a loop over prepared functions.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

MAPPINGS_DIR = Path(__file__).with_name("mappings")
IGNORE_FILE = "ignore.toml"
MAPPING_KEYS = frozenset({"system", "table", "entity", "fields", "toastable", "full_before_image", "non_owner"})
FIELD_SPEC_KEYS = frozenset({"type", "from", "min", "symbols", "required"})
_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class BadValue(ValueError):
    """A source value that breaks its mapping's rule; the message is the DLQ reason."""


Converter = Callable[[Any], Any]


def _string(v: Any) -> str:
    if isinstance(v, str):
        return v
    raise BadValue(f"expected a string, got {type(v).__name__} {v!r}")


def _integer(bits: int) -> Callable[[Any], int]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def convert(v: Any) -> int:
        if isinstance(v, int) and not isinstance(v, bool):
            if low <= v <= high:
                return v
            raise BadValue(f"{v} does not fit a {bits}-bit integer")
        raise BadValue(f"expected an integer, got {type(v).__name__} {v!r}")

    return convert


_INT: Callable[[Any], int] = _integer(32)
_LONG: Callable[[Any], int] = _integer(64)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise BadValue(f"expected a boolean, got {type(v).__name__} {v!r}")


def _decimal(scale: int) -> Converter:
    quantum = Decimal(1).scaleb(-scale)

    def convert(v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise BadValue(f"expected a decimal, got {type(v).__name__} {v!r}")
        if scale > 0 and isinstance(v, str) and "." not in v:
            # Debezium's string mode always writes the scale's digits ("5000.00"); no point means
            # base64 "precise" bytes that happen to look like digits.
            raise BadValue(f"{v!r} is not a decimal string with {scale} places (base64 'precise' decimal? "
                           "set decimal.handling.mode=string on the connector)")
        try:
            # float goes through repr so 0.1 stays 0.1, not its binary expansion
            d = Decimal(v if not isinstance(v, float) else repr(v))
        except InvalidOperation:
            raise BadValue(
                f"{v!r} is not a decimal string; base64 'precise' decimals cannot be read without a "
                "schema (set decimal.handling.mode=string on the connector)"
            ) from None
        if not d.is_finite():
            raise BadValue(f"{v!r} is not a finite decimal")
        try:
            q = d.quantize(quantum)
        except InvalidOperation:
            raise BadValue(f"{v!r} is out of range for a decimal with {scale} places") from None
        if q != d:
            raise BadValue(f"{v!r} has more than {scale} decimal places")
        return str(q)

    return convert


def _date(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return _INT(v)  # Debezium io.debezium.time.Date: days since the epoch
    if isinstance(v, str):
        try:
            return (date.fromisoformat(v) - _EPOCH_DATE).days
        except ValueError:
            pass
    raise BadValue(f"expected a date (days or ISO date), got {v!r}")


def _timestamp(v: Any) -> int:
    """ISO-8601 with a zone (Debezium ZonedTimestamp) -> microseconds since the epoch, UTC."""
    if isinstance(v, str):
        try:
            ts = datetime.fromisoformat(v)
        except ValueError:
            raise BadValue(f"expected an ISO-8601 timestamp, got {v!r}") from None
        if ts.tzinfo is None:
            raise BadValue(f"timestamp {v!r} has no time zone")
        return (ts - _EPOCH) // _MICROSECOND
    raise BadValue(f"expected an ISO-8601 timestamp string, got {type(v).__name__} {v!r}")


def _epoch(multiplier: int) -> Converter:
    def convert(v: Any) -> int:
        if isinstance(v, int) and not isinstance(v, bool):
            return _LONG(v * multiplier)
        raise BadValue(f"expected an epoch integer, got {type(v).__name__} {v!r}")

    return convert


def _json_text(v: Any) -> str:
    if isinstance(v, str):
        return v  # Debezium's Json type: the document as text
    raise BadValue(f"expected JSON text, got {type(v).__name__}")


_SIMPLE: dict[str, Converter] = {
    "string": _string,
    "int": _INT,
    "long": _LONG,
    "bool": _bool,
    "date": _date,
    "timestamp": _timestamp,
    "timestamp_ms": _epoch(1000),
    "timestamp_us": _epoch(1),
    "json": _json_text,
}


def _with_rules(conv: Converter, spec: Mapping[str, Any]) -> Converter:
    """Add the field's `min` or `symbols` rule to its type's converter (one closure per rule kind)."""
    if "symbols" in spec:
        symbols = frozenset(spec["symbols"])

        def enum(v: Any) -> Any:
            if isinstance(v, str) and v in symbols:
                return v
            raise BadValue(f"unknown value {v!r}; expected one of {sorted(symbols)}")

        return enum
    if "min" in spec:
        minimum = spec["min"]

        def at_least(v: Any) -> Any:
            out = conv(v)
            if out < minimum:
                raise BadValue(f"{out} is below the minimum {minimum} (negative quantity)")
            return out

        return at_least
    return conv


class FieldRule(NamedTuple):
    """How one canonical field is read: a tuple, so the hot loop unpacks it in one step."""

    name: str
    column: str
    required: bool
    convert: Converter


@dataclass(frozen=True)
class TableMapping:
    """One source table -> one canonical entity."""

    system: str
    table: str
    entity: str
    key: tuple[str, ...]
    fields: tuple[FieldRule, ...]
    toastable: frozenset[str] = field(default_factory=frozenset)
    # The source logs whole rows on delete (MariaDB/MySQL binlog_row_image=FULL, PostgreSQL REPLICA
    # IDENTITY FULL): deletes then carry every field, e.g. the order an allocation belonged to.
    full_before_image: bool = False

    @property
    def topic(self) -> str:
        return f"{self.system}.{self.table}"

    def field_of(self, column: str) -> str:
        """The canonical field a source column maps to."""
        return next(f.name for f in self.fields if f.column == column)

    def key_of(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Converted key fields of a row (used for deletes, where only the key is reliable)."""
        return self._convert(row, [f for f in self.fields if f.name in self.key])

    def convert(self, row: Mapping[str, Any], skip: frozenset[str] = frozenset()) -> dict[str, Any]:
        """All canonical fields of a row but those from `skip` columns; raises BadValue naming the field."""
        rules = self.fields if not skip else [f for f in self.fields if f.column not in skip]
        return self._convert(row, rules)

    def _convert(self, row: Mapping[str, Any], rules: Iterable[FieldRule]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, column, required, convert in rules:
            v = row.get(column)
            if v is None:
                if required:
                    raise BadValue(f"{name}: missing required value")
                out[name] = None
                continue
            try:
                out[name] = convert(v)
            except BadValue as exc:
                raise BadValue(f"{name}: {exc}") from None
        return out


def field_type_error(spec: Mapping[str, Any]) -> str | None:
    """What is wrong with a field's type and rules ({type, min, symbols, ...}), or None."""
    type_name = spec.get("type")
    if not isinstance(type_name, str):
        return f"type must be a string, got {type_name!r}"
    if type_name.startswith("decimal:"):
        if not type_name.split(":", 1)[1].isdigit():
            return f"unknown type {type_name!r}; a decimal is decimal:<scale>, e.g. decimal:2"
    elif type_name == "enum":
        if not spec.get("symbols"):
            return "enum without symbols"
    elif type_name not in _SIMPLE:
        return (f"unknown type {type_name!r}; expected one of {', '.join(sorted(_SIMPLE))}, enum, "
                "decimal:<scale>")
    if "min" in spec and type_name not in ("int", "long"):
        return "'min' applies to int and long fields only"
    return None


def _compile(path: Path, doc: dict[str, Any], key: tuple[str, ...]) -> TableMapping:
    unknown = sorted(set(doc) - MAPPING_KEYS)
    if unknown:
        raise ValueError(f"{path.name}: unknown keys {unknown}; expected {sorted(MAPPING_KEYS)}")
    rules = []
    for name, spec in doc["fields"].items():
        spec = {"type": spec} if isinstance(spec, str) else dict(spec)
        error = field_type_error(spec)
        if error:
            raise ValueError(f"{path.name}: field {name}: {error}")
        unknown = sorted(set(spec) - FIELD_SPEC_KEYS)
        if unknown:
            raise ValueError(f"{path.name}: field {name}: unknown keys {unknown}; expected {sorted(FIELD_SPEC_KEYS)}")
        type_name = spec["type"]
        if type_name.startswith("decimal:"):
            conv = _decimal(int(type_name.split(":", 1)[1]))
        elif type_name == "enum":
            conv = _string
        else:
            conv = _SIMPLE[type_name]
        rules.append(FieldRule(
            name=name,
            column=spec.get("from", name),
            required=bool(spec.get("required", False)) or name in key,
            convert=_with_rules(conv, spec),
        ))
    unknown_toast = set(doc.get("toastable", ())) - {r.column for r in rules}
    if unknown_toast:
        raise ValueError(f"{path.name}: toastable columns {sorted(unknown_toast)} are not mapped")
    missing = [k for k in key if k not in doc["fields"]]
    if missing:
        raise ValueError(f"{path.name}: key fields {missing} of entity {doc['entity']} are not mapped")
    return TableMapping(
        system=doc["system"], table=doc["table"], entity=doc["entity"], key=key,
        fields=tuple(rules), toastable=frozenset(doc.get("toastable", ())),
        full_before_image=bool(doc.get("full_before_image", False)),
    )


@dataclass(frozen=True)
class MappingSet:
    """Every mapping, by raw topic, plus the tables deliberately ignored."""

    by_topic: dict[str, TableMapping]
    ignored_topics: frozenset[str]

    @property
    def topics(self) -> list[str]:
        return sorted(self.by_topic)


def load_mappings(
    entity_keys: Mapping[str, tuple[str, ...]],
    directory: Path = MAPPINGS_DIR,
    entity_fields: Mapping[str, frozenset[str]] | None = None,
) -> MappingSet:
    """Load and check every mapping in directory against the canonical entities.

    entity_keys: entity -> key fields (from the Avro schemas); entity_fields, when given, the
    entity's fields, so a mapping cannot name a field the contract does not have.
    """
    by_topic: dict[str, TableMapping] = {}
    ignored: frozenset[str] = frozenset()
    for path in sorted(directory.glob("*.toml")):
        doc = tomllib.loads(path.read_text())
        if path.name == IGNORE_FILE:
            ignored = frozenset(doc.get("tables", ()))
            continue
        entity = str(doc.get("entity"))
        if entity not in entity_keys:
            raise ValueError(f"{path.name}: unknown canonical entity {entity!r}")
        if entity_fields is not None:
            unknown = set(doc["fields"]) - entity_fields[entity]
            if unknown:
                raise ValueError(f"{path.name}: fields {sorted(unknown)} are not in entity {entity}")
        mapping = _compile(path, doc, entity_keys[entity])
        if mapping.topic in by_topic:
            raise ValueError(f"{path.name}: a second mapping for {mapping.topic}")
        by_topic[mapping.topic] = mapping
    return MappingSet(by_topic=by_topic, ignored_topics=ignored)
