"""Canonicalization of Debezium change events, fenced by source position.

State is one ``ChangeLog`` per raw topic partition: Debezium partitions by row key, so every
version of a row passes through the same partition, and keeping the log per partition lets the
engine hand whole batches to ``apply`` instead of one call per row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.mapping import BadValue, MappingSet, TableMapping
from state.records import EXCEPTIONS_TOPIC, DeadLetter, Emit, Ignored, Outcome, RawRecord

STEP = "canonicalize"
# What Debezium's PostgreSQL connector sends for an unchanged TOASTed column it did not receive.
TOAST_PLACEHOLDER = "__debezium_unavailable_value"
HEARTBEAT_PREFIX = "__debezium-heartbeat"
_SNAPSHOT_FALSE = frozenset({"false", None, False})


def encode_key(values: list[Any]) -> str:
    """Canonical topic key: the compact JSON array of the key values (strings and integers).

    Hand-rolled with json's C string escaper: this runs once per event and json.dumps costs more
    than everything else about a key.
    """
    return "[" + ",".join(_json_string(v) if isinstance(v, str) else str(v) for v in values) + "]"


_json_string = json.encoder.encode_basestring


# key (JSON array text) -> (position, deleted, retained toastable values or None)
RowVersion = tuple[str, bool, dict[str, Any] | None]
ChangeLog = dict[str, RowVersion]


@dataclass(frozen=True)
class EntityInfo:
    """What canonicalization needs to know of an entity's contract."""

    schema: str  # Avro full name
    owner: str  # system of record
    topic: str  # canonical topic


def source_position(source: Mapping[str, Any]) -> str | None:
    """A string whose lexicographic order is the change order within one source system.

    PostgreSQL: (last commit LSN, event LSN) from Debezium's ``sequence``; MariaDB/MySQL: (binlog
    file number, event position, row in event). Fixed-width fields make string order numeric.
    """
    connector = source.get("connector")
    try:
        if connector == "postgresql":
            # sequence is '["<last commit lsn>","<event lsn>"]' (either may be null)
            seq = source.get("sequence")
            last, current = seq.strip("[]").replace('"', "").split(",") if seq else ("null", "null")
            lsn = current if current != "null" else source["lsn"]
            return f"{int(last) if last != 'null' else 0:016x}/{int(lsn):016x}"
        if connector in ("mariadb", "mysql"):
            fileno = int(str(source["file"]).rsplit(".", 1)[1])
            return f"{fileno:06d}/{int(source['pos']):012d}/{int(source.get('row') or 0):06d}"
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return None


def event_id(topic: str, position: str, key: str) -> str:
    """Deterministic from source coordinates, so a replay produces the same ids."""
    return hashlib.blake2b(f"{topic}|{position}|{key}".encode(), digest_size=16).hexdigest()


class Canonicalizer:
    """Turns raw Debezium records into canonical events, DLQ records and counted ignores."""

    def __init__(self, mappings: MappingSet, entities: Mapping[str, EntityInfo]) -> None:
        self.mappings = mappings
        self.entities = entities

    def apply(self, state: ChangeLog | None, raw: RawRecord) -> tuple[ChangeLog, list[Outcome]]:
        log: ChangeLog = {} if state is None else state
        return log, self._apply(log, raw)

    def _apply(self, log: ChangeLog, raw: RawRecord) -> list[Outcome]:
        topic = raw.topic
        if topic.startswith(HEARTBEAT_PREFIX):
            return [Ignored("heartbeat", topic, raw.partition, raw.offset)]
        if raw.value is None:
            # The delete event before it already carried the change; compaction needs the tombstone.
            return [Ignored("tombstone", topic, raw.partition, raw.offset)]
        if topic in self.mappings.ignored_topics:
            return [Ignored("ignored_table", topic, raw.partition, raw.offset)]
        mapping = self.mappings.by_topic.get(topic)
        if mapping is None:
            return [DeadLetter(raw, f"no mapping for source table {topic}", STEP)]
        try:
            envelope = json.loads(raw.value.decode())
        except (UnicodeDecodeError, ValueError) as exc:
            return [DeadLetter(raw, f"malformed JSON: {exc}", STEP)]
        if not isinstance(envelope, dict) or not isinstance(envelope.get("source"), dict):
            return [DeadLetter(raw, "not a Debezium change event (no source block)", STEP)]
        op = envelope.get("op")
        if op == "m":
            return [Ignored("logical_message", topic, raw.partition, raw.offset)]
        if op not in ("c", "r", "u", "d", "t"):
            return [DeadLetter(raw, f"unknown op {op!r}", STEP)]
        source = envelope["source"]
        position = source_position(source)
        if position is None:
            return [DeadLetter(raw, "no source position in the event's source block", STEP)]
        entity = self.entities[mapping.entity]
        if op == "t":
            return self._truncate(log, raw, mapping, entity, source, position)
        try:
            if op == "d":
                before = envelope.get("before") or _key_row(raw)
                fields = mapping.convert(before) if mapping.full_before_image and envelope.get("before") \
                    else mapping.key_of(before)
            else:
                after = envelope.get("after")
                if not isinstance(after, dict):
                    return [DeadLetter(raw, f"op {op!r} without an 'after' row", STEP)]
                fields = self._convert_merging_toast(log, mapping, after)
        except BadValue as exc:
            return [DeadLetter(raw, str(exc), STEP)]
        except _ToastUnknown as exc:
            return [DeadLetter(raw, str(exc), STEP)]
        key = encode_key([fields[k] for k in mapping.key])
        if mapping.system != entity.owner:
            return [self._sor_violation(raw, mapping, entity, key, source, position)]
        previous = log.get(key)
        if previous is not None and position <= previous[0]:
            return [Ignored("duplicate_or_stale", topic, raw.partition, raw.offset)]
        deleted = op == "d"
        retained = None
        if mapping.toastable and not deleted:
            retained = {c: fields[mapping.field_of(c)] for c in mapping.toastable}
        log[key] = (position, deleted, retained)
        return [self._emit(raw, mapping, entity, key, source, position, deleted, fields)]

    def _convert_merging_toast(
        self, log: ChangeLog, mapping: TableMapping, after: dict[str, Any]
    ) -> dict[str, Any]:
        """Convert a row; unchanged TOAST columns take the row's last known value, never the placeholder."""
        if TOAST_PLACEHOLDER not in after.values():
            return mapping.convert(after)
        columns = frozenset(c for c, v in after.items() if v == TOAST_PLACEHOLDER)
        not_toastable = sorted(columns - mapping.toastable)
        if not_toastable:
            raise _ToastUnknown(
                f"unavailable-value placeholder in {not_toastable}; list them as toastable in the "
                f"mapping of {mapping.table} (or set REPLICA IDENTITY FULL)"
            )
        fields = mapping.convert(after, skip=columns)
        key = encode_key([fields[k] for k in mapping.key])
        previous = log.get(key)
        retained = previous[2] if previous is not None and not previous[1] else None
        missing = sorted(c for c in columns if retained is None or c not in retained)
        if missing or retained is None:
            raise _ToastUnknown(f"unchanged TOAST value of {missing}, no earlier value known for key {key}")
        fields.update((mapping.field_of(c), retained[c]) for c in columns)
        return fields

    def _truncate(
        self, log: ChangeLog, raw: RawRecord, mapping: TableMapping, entity: EntityInfo,
        source: Mapping[str, Any], position: str,
    ) -> list[Outcome]:
        """A TRUNCATE deletes every row: a delete event for each live key this partition has seen."""
        outcomes: list[Outcome] = []
        for key, (pos, deleted, _) in sorted(log.items()):
            if deleted or position <= pos:
                continue
            fields = dict(zip(mapping.key, json.loads(key), strict=True))
            log[key] = (position, True, None)
            outcomes.append(self._emit(raw, mapping, entity, key, source, position, True, fields))
        return outcomes or [Ignored("truncate_of_nothing_known", raw.topic, raw.partition, raw.offset)]

    def _emit(
        self, raw: RawRecord, mapping: TableMapping, entity: EntityInfo, key: str,
        source: Mapping[str, Any], position: str, deleted: bool, fields: dict[str, Any],
    ) -> Emit:
        value: dict[str, Any] = {
            "event_id": event_id(raw.topic, position, key),
            "op": "delete" if deleted else "upsert",
            "source": _source_block(raw, mapping, source, position),
        }
        if deleted:  # only the key, unless the source logs whole rows (full_before_image)
            keep = mapping.full_before_image
            value.update((f.name, fields.get(f.name) if keep or f.name in mapping.key else None)
                         for f in mapping.fields)
        else:
            value.update(fields)
        return Emit(entity.topic, key, entity.schema, value)

    def _sor_violation(
        self, raw: RawRecord, mapping: TableMapping, entity: EntityInfo, key: str,
        source: Mapping[str, Any], position: str,
    ) -> Emit:
        ts = int(source.get("ts_ms") or 0)
        exc_id = hashlib.blake2b(f"sor_violation|{mapping.entity}|{key}".encode(), digest_size=16).hexdigest()
        return Emit(EXCEPTIONS_TOPIC, exc_id, "io.erpsync.SyncException", {
            "id": exc_id,
            "kind": "sor_violation",
            "severity": "error",
            "entity": mapping.entity,
            "business_key": key,
            "reason": f"{mapping.system} changed {mapping.entity}, which {entity.owner} owns; not applied",
            "detail": json.dumps({"table": mapping.table, "topic": raw.topic}),
            "source": _source_block(raw, mapping, source, position),
            "first_seen_ms": ts,
            "last_seen_ms": ts,
            "occurrences": 1,
            "state": "open",
        })


class _ToastUnknown(Exception):
    """An unchanged TOAST value that cannot be merged."""


def _key_row(raw: RawRecord) -> dict[str, Any]:
    """The row key from the Kafka record key, for a delete without a 'before' image."""
    try:
        key = json.loads(raw.key) if raw.key else None
    except ValueError:
        key = None
    if not isinstance(key, dict):
        raise BadValue("delete without a 'before' image or a readable key")
    return key


def _source_block(
    raw: RawRecord, mapping: TableMapping, source: Mapping[str, Any], position: str
) -> dict[str, Any]:
    tx = source.get("txId", source.get("gtid"))
    return {
        "system": mapping.system,
        "table": mapping.table,
        "position": position,
        "tx_id": None if tx is None else str(tx),
        "commit_ts_ms": int(source.get("ts_ms") or 0),
        "snapshot": source.get("snapshot") not in _SNAPSHOT_FALSE,
        "topic": raw.topic,
        "partition": raw.partition,
        "offset": raw.offset,
    }
