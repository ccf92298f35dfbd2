"""Pure domain logic: deterministic reducers ``apply(state, key, item, time) -> (state, outputs)``.

Nothing here imports bytewax or a client library, and nothing reads the clock: event time comes in
with the items, in order (``state.sequencer``). That keeps every rule unit-testable with plain lists
and the engine replaceable.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from state.records import EXCEPTIONS_TOPIC, Emit

EXCEPTION_SCHEMA = "io.erpsync.SyncException"


def newer(row: tuple[object, ...] | None, position: str) -> bool:
    """Whether a change at `position` supersedes `row`, a stored row whose first field is its position.

    Every reducer fences its rows this way: stale, duplicate and replayed events change nothing.
    """
    return row is None or position > str(row[0])


def exception_id(kind: str, entity: str, key: str) -> str:
    """Deterministic: the same problem (kind, entity, business key) is always the same exception."""
    return hashlib.blake2b(f"{kind}|{entity}|{key}".encode(), digest_size=16).hexdigest()


def exception(kind: str, severity: str, entity: str, key: str, reason: str, detail: dict[str, Any],
              event_ms: int, *, source: dict[str, Any] | None = None, state: str = "open") -> Emit:
    """A SyncException record; its id is deterministic so repeated occurrences update one exception."""
    exc_id = exception_id(kind, entity, key)
    return Emit(EXCEPTIONS_TOPIC, exc_id, EXCEPTION_SCHEMA, {
        "id": exc_id, "kind": kind, "severity": severity, "entity": entity, "business_key": key,
        "reason": reason, "detail": json.dumps(detail, sort_keys=True), "source": source,
        "first_seen_ms": event_ms, "last_seen_ms": event_ms, "occurrences": 1, "state": state,
    })
