"""Service-level timers on event time (spec section 9): deadlines armed by facts, fired by the clock.

The order step knows, per order, which deadlines are armed (``allocation_sla_breach``,
``status_mismatch``, ``credit_pending``) and sends a ``Deadline`` when one is armed, moved or
disarmed. ``Deadlines`` keeps them under one key, where event time arrives as ``Tick``s from every
source event, and raises the exception when event time passes a deadline still armed. A deadline
fires once; arming it again (a new occurrence) can fire it again, with the same exception id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from state import Tick, exception
from state.records import Emit


@dataclass(frozen=True, slots=True)
class Slas:
    """How long event time may pass before an open situation becomes an exception."""

    allocation_ms: int = 4 * 3600 * 1000  # accepted by the ERP, not allocated by the WMS
    status_grace_ms: int = 15 * 60 * 1000  # ERP and WMS disagree about an order
    credit_ms: int = 72 * 3600 * 1000  # return received, no credit memo
    unknown_sku_ms: int = 60 * 1000  # stock or orders for a SKU the item master does not have (yet)


@dataclass(frozen=True, slots=True)
class Deadline:
    """Arm (due_ms set) or disarm (None) the timer `kind` for the business key `key`."""

    kind: str
    key: str
    due_ms: int | None
    reason: str = ""
    detail: tuple[tuple[str, Any], ...] = ()
    entity: str = "order"


SEVERITY = {"allocation_sla_breach": "warning", "status_mismatch": "error", "credit_pending": "warning"}


@dataclass(slots=True)
class DeadlineState:
    armed: dict[tuple[str, str], Deadline] = field(default_factory=dict)
    now_ms: int = 0  # the clock: event time every input stream has reached (see Deadlines)
    watermarks: dict[str, int] = field(default_factory=dict)  # input stream -> newest event time

    def copy(self) -> DeadlineState:
        return DeadlineState(dict(self.armed), self.now_ms, dict(self.watermarks))


class Deadlines:
    """Reducer for every armed deadline, under one key.

    The clock is the event time *every* input stream has reached (the minimum of their
    watermarks), not the fastest one's: while the WMS topic lags the ERP's (a backlog, a connector
    restart), an ERP order is not declared unallocated because its allocation is still unread.
    Streams that are idle do not hold the clock back: live, the flow names them (no tick for a
    short wall-clock wait, ``advance``); in replay (`quiet_ms` set), a stream more than `quiet_ms`
    behind the newest counts as idle.
    """

    def __init__(self, quiet_ms: int | None = None) -> None:
        self.quiet_ms = quiet_ms

    def apply(self, state: DeadlineState | None, event: Deadline | Tick) -> tuple[DeadlineState, list[Emit]]:
        st = state or DeadlineState()
        if isinstance(event, Tick):
            if event.event_ms <= st.watermarks.get(event.stream, -1):
                return st, []
            st.watermarks[event.stream] = event.event_ms
            return st, self.advance(st, frozenset())
        if event.due_ms is None:
            st.armed.pop((event.kind, event.key), None)
            return st, []
        st.armed[(event.kind, event.key)] = event
        return st, self._fire(st, [(event.due_ms, (event.kind, event.key))] if event.due_ms <= st.now_ms else [])

    def advance(self, st: DeadlineState, quiet: frozenset[str] | None) -> list[Emit]:
        """Move the clock to what every stream not `quiet` has reached (None: all quiet) and fire what is due."""
        if not st.watermarks:
            return []
        newest = max(st.watermarks.values())
        active = [ms for stream, ms in st.watermarks.items() if quiet is not None and stream not in quiet
                  and (self.quiet_ms is None or ms >= newest - self.quiet_ms)]
        now = min(active) if active else newest
        if now <= st.now_ms:
            return []
        st.now_ms = now
        return self._fire(st, sorted((d.due_ms or 0, k) for k, d in st.armed.items() if (d.due_ms or 0) <= now))

    def _fire(self, st: DeadlineState, due: list[tuple[int, tuple[str, str]]]) -> list[Emit]:
        out = []
        for _, k in due:
            d = st.armed.pop(k)
            out.append(exception(d.kind, SEVERITY.get(d.kind, "warning"), d.entity, d.key, d.reason,
                                 {**dict(d.detail), "due_ms": d.due_ms}, st.now_ms))
        return out
