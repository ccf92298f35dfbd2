"""The availability dataflow in bytewax, 1 and 2 workers, against the spec formula on final rows."""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from hypothesis import HealthCheck, given, settings

from erpsync.flows.availability import availability
from erpsync.records import Emit
from erpsync.state.ats import AVAILABILITY_SCHEMA, IntakeAccepted
from tests.unit.test_ats_properties import CHANNELS, SKUS, World, expected_ats, histories


def run_flow(events: list[Any], workers: int) -> dict[tuple[str, str], int]:
    out: list[Emit] = []
    flow = Dataflow("test_availability")
    inp = op.input("inp", flow, TestingSource(events, batch_size=3))
    split = op.branch("is_intake", inp, lambda e: isinstance(e, IntakeAccepted))
    result = availability(split.falses, split.trues, CHANNELS)  # type: ignore[arg-type]
    op.output("out", result, TestingSink(out))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    final: dict[tuple[str, str], int] = {}
    for e in out:  # per key, outputs arrive in order
        if e.schema == AVAILABILITY_SCHEMA:
            final[(e.value["channel"], e.value["sku"])] = e.value["ats"]
    return final


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_one_and_two_workers_give_the_formula(history: tuple[list[Any], World]) -> None:
    events, world = history
    one, two = run_flow(events, 1), run_flow(events, 2)
    assert one == two
    for channel in CHANNELS:
        for sku in SKUS:
            assert one.get((channel.id, sku), 0) == expected_ats(world, channel, sku), (channel.id, sku)
