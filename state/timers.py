"""Service-level timers on event time (spec section 9), fired when event time passes them.

A step that sees a situation begin (an order accepted but not allocated, a return without a credit
memo, stock for a SKU the item master lacks) sends a ``Deadline`` with its due time; when the
situation ends it sends the same deadline disarmed. Deadlines are kept by ``Timers`` under the key of
the minute they fall due in, so timers spread over workers and each key holds only what falls due in
its minute; the sequencer wakes the key when event time passes the minute.

A deadline fires once, at its due time (the exception's time), if it is still armed then. A deadline
already past when it is armed fires at once. Resolution is the arming step's: it knows when the
situation ended, and whether that was before or after the due time (``overdue``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from state import exception
from state.records import pickled_by_position
from state.sequencer import Wake

BUCKET_MS = 60_000
SEVERITY = {"allocation_sla_breach": "warning", "status_mismatch": "error", "credit_pending": "warning",
            "unknown_sku": "warning"}


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Deadline:
    """Arm (`armed`) or disarm the timer `kind` for business key `key`, due at `due`."""

    kind: str
    key: str
    due: int
    time: int  # event time of the fact that armed or disarmed it
    armed: bool = True
    reason: str = ""
    detail: tuple[tuple[str, Any], ...] = ()
    entity: str = "order"

    @property
    def bucket(self) -> str:
        """The key of the minute it falls due in."""
        return str(self.due - self.due % BUCKET_MS)

    @property
    def wake(self) -> int:
        """When the minute's key must look at it: the minute's last millisecond."""
        return self.due - self.due % BUCKET_MS + BUCKET_MS - 1


def overdue(kind: str, entity: str, key: str, reason: str, due: int, cleared_ms: int,
            detail: dict[str, Any], *, armed_ms: int) -> list[Any]:
    """A deadline that passed before its situation ended: the exception at its due time, resolved at the end.

    The timer fired it already if it was armed at or after its due time (it fires at once then), or
    if its minute's wake came before the end; else the disarm reaches the timer first, and the
    exception is raised here.
    """
    severity = SEVERITY.get(kind, "warning")
    fired = armed_ms >= due or cleared_ms > due - due % BUCKET_MS + BUCKET_MS - 1
    out = [] if fired else [
        exception(kind, severity, entity, key, reason, {**detail, "due_ms": due}, due)]
    out.append(exception(kind, severity, entity, key, f"resolved: {reason}",
                         {**detail, "due_ms": due, "cleared_ms": cleared_ms}, cleared_ms, state="resolved"))
    return out


def arm(d: Deadline) -> list[Any]:
    """What arming `d` sends: the deadline, for the timers, or its exception at once if already due.

    A due time can be past when armed (it may come from a source column, e.g. a return's
    received_at). Raising it here, in the arming step, keeps it in order with its resolution,
    which the same step sends (``overdue`` with ``armed_ms`` >= due).
    """
    return [fire(d)] if d.due <= d.time else [d]


def fire(d: Deadline) -> Any:
    """The exception of a deadline that fell due while armed, at its due time."""
    return exception(d.kind, SEVERITY.get(d.kind, "warning"), d.entity, d.key, d.reason,
                     {**dict(d.detail), "due_ms": d.due}, d.due)


@pickled_by_position
@dataclass(slots=True)
class TimerState:
    armed: dict[tuple[str, str], Deadline] = field(default_factory=dict)



class Timers:
    """Keyed by the minute deadlines fall due in: arm, disarm, and fire what is due when woken."""

    def apply(self, state: TimerState | None, key: str, item: Any, time: int) -> tuple[TimerState | None, list[Any]]:
        st = state or TimerState()
        if isinstance(item, Wake):
            return self._fire(st, item.ms)
        if not isinstance(item, Deadline):
            return state, []
        name = (item.kind, item.key)
        if not item.armed:
            if name in st.armed and st.armed[name].due == item.due:
                del st.armed[name]
        elif item.due <= time:  # (arming steps fire these themselves: see `arm`)
            st.armed.pop(name, None)
            return (st if st.armed else None), [fire(item)]
        else:
            st.armed[name] = item
        return (st if st.armed else None), []

    def _fire(self, st: TimerState, now: int) -> tuple[TimerState | None, list[Any]]:
        due = sorted((d.due, name) for name, d in st.armed.items() if d.due <= now)
        out = [fire(st.armed.pop(name)) for _, name in due]
        return (st if st.armed else None), out

    def close(self, state: TimerState | None, key: str, time: int) -> tuple[TimerState | None, list[Any]]:
        return state, []

