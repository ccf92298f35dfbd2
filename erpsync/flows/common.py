"""Wiring shared by the dataflows."""

from __future__ import annotations

from dataclasses import dataclass

import bytewax.operators as op
from bytewax.dataflow import Stream

from erpsync.records import DeadLetter, Emit, Ignored, Outcome


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
