"""Wiring shared by the dataflows."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from state import Tick
from state.records import DeadLetter, Emit, Ignored, Outcome


@dataclass(frozen=True)
class Outcomes:
    """A step's results split by kind: every input ends in exactly one of these."""

    emits: Stream[Emit]
    dead_letters: Stream[DeadLetter]
    ignored: Stream[Ignored]


def split(step_id: str, up: Stream[Outcome]) -> Outcomes:
    emits = op.branch(f"{step_id}_is_emit", up, lambda o: isinstance(o, Emit))
    rest = op.branch(f"{step_id}_is_dead_letter", emits.falses, lambda o: isinstance(o, DeadLetter))
    return Outcomes(emits.trues, rest.trues, rest.falses)  # type: ignore[arg-type]


def reduce(step_id: str, up: Stream[tuple[str, Any]], apply: Callable[[Any, Any], tuple[Any, list[Any]]],
           copy: Callable[[Any], Any], flush: Callable[[Any], list[Any]] | None = None) -> Stream[Any]:
    """Run a pure reducer ``apply(state, value) -> (state, outputs)`` per key, a batch at a time.

    ``copy`` makes the snapshot: bytewax may serialize it after later items changed the live state.
    ``flush(state)``, if given, runs after each batch of a key: what a reducer publishes once per
    batch rather than once per input (a source transaction's rows usually arrive together).
    """

    class Logic(StatefulBatchLogic[Any, Any, Any]):
        def __init__(self, resume: Any) -> None:
            self.state = resume

        def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
            out: list[Any] = []
            for value in values:
                self.state, outs = apply(self.state, value)
                out.extend(outs)
            if flush is not None and self.state is not None:
                out.extend(flush(self.state))
            return out, StatefulBatchLogic.RETAIN

        def snapshot(self) -> Any:
            return copy(self.state)

    return op.key_rm(f"{step_id}_unkey", op.stateful_batch(step_id, up, Logic))


class Ticker:
    """Forwards a Tick when this worker first sees a new `resolution_ms` slot of an input's event time.

    Event time is the source commit time of canonical events, per raw input partition (the unit
    Kafka delivers in order: one table's changes). Its memory is not recovered: after a restart the
    first ticks are sent again, which changes nothing (reducers keep the maximum).
    """

    def __init__(self, resolution_ms: int = 1000) -> None:
        self.resolution_ms = resolution_ms
        self.last: dict[str, int] = {}

    def __call__(self, event: Emit) -> Tick | None:
        source = event.value["source"]
        ms = source["commit_ts_ms"]
        stream = f"{source.get('topic') or source['system']}#{source.get('partition', 0)}"
        slot = ms - ms % self.resolution_ms
        if slot <= self.last.get(stream, -1):
            return None
        self.last[stream] = slot
        return Tick(slot, stream)
