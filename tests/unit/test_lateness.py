"""The live source's lateness: how far behind their partition's promise records arrived, recently."""

from __future__ import annotations

from connectors.kafka import Lateness


def test_the_largest_recent_lateness_counts_and_old_seconds_expire() -> None:
    lateness = Lateness()
    assert lateness.current(1_000_000) == 0
    lateness.observe(1_000_000, 40)
    lateness.observe(1_000_500, 420)  # a busy moment
    lateness.observe(1_003_000, 30)
    assert lateness.current(1_003_000) == 420
    assert lateness.current(1_000_000 + (Lateness.WINDOW_S + 1) * 1000) == 30
    assert lateness.current(1_000_000 + (Lateness.WINDOW_S + 4) * 1000) == 0


def test_an_old_timestamp_holds_promises_back_by_the_cap_only() -> None:
    lateness = Lateness()
    lateness.observe(10_000_000, 3 * 3600 * 1000)  # a record produced with a timestamp hours old
    assert lateness.current(10_000_000) == Lateness.CAP_MS
