"""A shard holds the closed transactions it must not cut merged, and releases exactly as if it held each one."""

from __future__ import annotations

import heapq
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.sequencing import _ShardLogic
from state.sequencer import Mark, SeqState, Sequencer, Stamped, mark_closing, merged_spans


def test_a_pipeline_behind_holds_its_open_spans_merged_not_one_per_transaction() -> None:
    # 2,000 source transactions of 3 ms each, one every 2 ms (overlapping), while one channel is behind:
    # nothing can be released, and every mark used to scan every span held (steady 1,000 changes/s
    # fell behind, 43% of the pipeline's CPU in those scans)
    seq = Sequencer(["erp", "wms"])
    state = SeqState()
    state, _ = seq.apply(state, Mark("wms", 0))
    for i in range(2000):
        state, out = seq.apply(state, Mark("erp", 2 * i + 3, ((2 * i, 2 * i + 3),)))
        assert out == []
    assert state.spans == [(0, 4001)]
    state, out = seq.apply(state, Mark("wms", 5000))
    assert state.released == 4001 and state.spans == []  # (erp promised 4001)


class Exact(Sequencer):
    """The rule as first written: every span kept as it came, every one checked at every mark (no wakes)."""

    def _mark(self, st: SeqState, mark: Mark) -> list[Stamped]:
        if mark.channel not in self.channels:
            return []
        st.marks[mark.channel] = max(mark.ms, st.marks.get(mark.channel, -1))
        st.spans.extend(s for s in mark.spans if s[1] > st.released and s[1] > s[0])
        low = self._promised(st)
        if low is None or low <= st.released:
            return []
        for first, last in sorted((s for s in st.spans if s[0] <= low), reverse=True):
            if first <= low < last:
                low = first - 1
        if low <= st.released:
            return []
        out: list[Stamped] = []
        while st.heap and st.heap[0][0] <= low:
            out.append(heapq.heappop(st.heap)[3])
        st.released = low
        st.spans = [s for s in st.spans if s[1] > low]
        mark_closing(out)
        return out


_event = st.one_of(
    st.tuples(st.just("item"), st.integers(0, 60)),
    st.tuples(st.just("mark"), st.sampled_from(["a", "b"]), st.integers(0, 70),
              st.lists(st.tuples(st.integers(0, 60), st.integers(1, 12)), max_size=3)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_event, max_size=60))
def test_merged_spans_release_exactly_what_each_span_kept_apart_releases(events: list[Any]) -> None:
    merged, exact = Sequencer(["a", "b"]), Exact(["a", "b"])
    s1, s2 = SeqState(), SeqState()
    for n, event in enumerate(events):
        if event[0] == "item":
            item = (Stamped("s", "k", event[1], (n,), n), Stamped("s", "k", event[1], (n,), n))
        else:
            _, channel, ms, spans = event
            item = (Mark(channel, ms, tuple((f, f + d) for f, d in spans)),) * 2
        s1, out1 = merged.apply(s1, item[0])
        s2, out2 = exact.apply(s2, item[1])
        assert [(s.time, s.item, s.last) for s in out1] == [(s.time, s.item, s.last) for s in out2]
        assert s1.released == s2.released


def test_a_shard_resumed_from_a_snapshot_with_spans_kept_apart_holds_them_merged() -> None:
    resume = SeqState(spans=[(20, 25), (5, 9), (1, 6), (9, 12)])  # as snapshots before 2026-12-01 hold them
    shard = _ShardLogic("s1", Sequencer(["a"]), resume, ["st"], ["fence"])
    assert shard.state.spans == [(1, 12), (20, 25)]
    assert merged_spans(shard.state.spans) == shard.state.spans
