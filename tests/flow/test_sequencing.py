"""Sequenced stages: keyed steps see their items in event-time order, whatever the arrival order,
batching or worker count; watermarks cross stages with the data (fences)."""

from __future__ import annotations

import pickle
import random
import threading
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from flows import packing
from flows.sequencing import StageStep, _Step, _StepLogic, fence_keys, stage, worker_of
from state.sequencer import END_MS, SOURCE_CHANNEL, Mark, MarkMerger, Sequencer, Stamped, Wake, read_group, read_groups


class Recorder:
    """Keeps, per key, what it applied; passes each item on to the next stage (as a tagged copy)."""

    def __init__(self, forward_to: str | None) -> None:
        self.forward_to = forward_to

    def apply(self, state: Any, key: str, item: Any, time: int) -> tuple[Any, list[Any]]:
        seen = list(state or [])
        seen.append((time, item))
        out: list[Any] = [("seen", key, time, item)]
        if self.forward_to and not isinstance(item, Wake):
            out.append(("fwd", key, item))
        return seen, out

    def close(self, state: Any, key: str, time: int) -> tuple[Any, list[Any]]:
        return state, [("closed", key, time)]



def _route(forward_to: str | None):
    def route(o: Any, time: int) -> list[tuple[str, str, int]]:
        if forward_to and o[0] == "fwd":
            return [(forward_to, "k2-" + o[1][-1], 0)]
        return []
    return route


def _inputs(seed: int, channels: int = 3, per_channel: int = 30) -> list[Any]:
    """Items on several channels, each channel in time order, interleaved at random, with marks."""
    rng = random.Random(seed)
    streams = []
    for c in range(channels):
        t = 0
        items: list[Any] = []
        for i in range(per_channel):
            t += rng.choice([0, 1, 1, 3, 7])
            key = f"k{rng.randrange(4)}"
            wake = t + 5 if rng.random() < 0.1 else 0
            items.append(Stamped("s1", key, t, (c, f"{i:04d}"), f"c{c}-{i}", wake))
            if rng.random() < 0.3:
                items.append(Mark(f"ch{c}", t - 1))
        items.append(Mark(f"ch{c}", END_MS))
        streams.append(items)
    out: list[Any] = []
    while any(streams):
        s = rng.choice([s for s in streams if s])
        out.append(s.pop(0))
    return out


def _flow(inputs: list[Any], out: list[Any], workers: int, batch: int) -> Dataflow:
    flow = Dataflow("seq")
    src = op.input("in", flow, TestingSource(inputs, batch_size=batch))
    split = op.branch("is_mark", src, lambda x: isinstance(x, Mark))
    channels = [f"ch{c}" for c in range(3)]
    outs1, marks1 = stage("st1", split.falses, split.trues, channels,
                          {"s1": StageStep(Recorder("s2"), _route("s2"))}, workers=workers, shards=3)
    second = op.branch("stamped", outs1, lambda o: isinstance(o, Stamped))
    outs2, _ = stage("st2", second.trues, marks1, [f"s1@{w}" for w in range(workers)],
                     {"s2": StageStep(Recorder(None), _route(None))}, workers=workers, shards=2)
    op.output("out1", second.falses, TestingSink(out))
    op.output("out2", outs2, TestingSink(out))
    return flow


def _run(inputs: list[Any], workers: int, batch: int) -> list[Any]:
    out: list[Any] = []
    flow = _flow(inputs, out, workers, batch)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return out


def _per_key(out: list[Any]) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {}
    for o in out:
        if o[0] in ("seen", "closed"):
            seen.setdefault(o[1], []).append(o[1:] if o[0] == "closed" else (o[2], o[3]))
    return seen


def _expected(inputs: list[Any]) -> dict[str, list[Any]]:
    items = sorted((s for s in inputs if isinstance(s, Stamped)), key=lambda s: (s.time, s.order))
    exp: dict[str, list[Any]] = {}
    for s in items:
        exp.setdefault(s.key, []).append((s.time, s.item))
    return exp


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("workers", [1, 2])
def test_items_reach_each_key_in_event_time_order(seed: int, workers: int) -> None:
    inputs = _inputs(seed)
    got = _per_key(_run(inputs, workers, batch=random.Random(seed).randint(1, 7)))
    expected = _expected(inputs)
    for key, items in expected.items():
        applied = [x for x in got[key] if not isinstance(x[1], Wake) and isinstance(x[0], int)]
        assert applied == items, key
    # the second stage sees the forwarded items of each source key in the same order
    for key, items in expected.items():
        forwarded = [x[1][2] for x in got["k2-" + key[-1]] if isinstance(x[1], tuple) and x[1][1] == key]
        assert forwarded == [i for _, i in items]


def test_outputs_do_not_depend_on_batching_interleaving_or_workers() -> None:
    inputs = _inputs(7)
    baseline = _per_key(_run(inputs, 1, batch=100))
    rng = random.Random(11)
    for workers in (1, 2):
        shuffled = _inputs(7)  # same items, same per-channel order...
        channels: dict[str, list[Any]] = {}
        for x in shuffled:
            channels.setdefault(x.channel if isinstance(x, Mark) else f"ch{x.order[0]}", []).append(x)
        mixed: list[Any] = []
        while any(channels.values()):  # ...another interleaving of the channels
            c = rng.choice([c for c in channels if channels[c]])
            mixed.append(channels[c].pop(0))
        assert _per_key(_run(mixed, workers, batch=rng.randint(1, 5))) == baseline


def test_wakes_come_in_order_after_their_millisecond() -> None:
    inputs = [Stamped("s1", "k1", 10, (0, "a"), "x", wake=15), Stamped("s1", "k1", 15, (0, "b"), "y"),
              Stamped("s1", "k1", 20, (0, "c"), "z"), *(Mark(f"ch{c}", END_MS) for c in range(3))]
    got = _per_key(_run(inputs, 1, batch=1))["k1"]
    applied = [x for x in got if isinstance(x[0], int)]
    assert applied == [(10, "x"), (15, "y"), (15, Wake(15)), (20, "z")]


def test_nothing_is_released_before_every_channel_has_marked() -> None:
    inputs = [Stamped("s1", "k1", 10, (0, "a"), "x"), Mark("ch0", 100), Mark("ch1", 100)]
    assert _per_key(_run(inputs, 1, batch=10)) == {}  # ch2 never promised anything


def test_a_key_closes_only_between_whole_transactions() -> None:
    """x1/x2 are one source transaction (a millisecond apart), y another system's change in between."""
    inputs = [Stamped("s1", "k1", 10, (0, "a"), "x1", tx="X"), Stamped("s1", "k1", 10, (1, "a"), "y", tx="Y"),
              Stamped("s1", "k1", 11, (0, "b"), "x2", tx="X"), Stamped("s1", "k1", 12, (0, "c"), "z"),
              *(Mark(f"ch{c}", END_MS) for c in range(3))]
    got = _per_key(_run(inputs, 1, batch=1))["k1"]
    assert got == [(10, "x1"), (10, "y"), (11, "x2"), ("k1", 11), (12, "z"), ("k1", 12)]


@pytest.mark.parametrize("workers", [2, 3])
def test_fence_keys_land_on_their_worker_and_sort_last(workers: int) -> None:
    keys = fence_keys(workers)
    assert [worker_of(k, workers) for k in keys] == list(range(workers))
    assert all(k > "\uffff" * 4 for k in keys)  # after any key of BMP characters (bytewise UTF-8)
    seen: dict[str, int] = {}

    class Where(StatefulBatchLogic):  # type: ignore[misc]
        def __init__(self, resume: Any) -> None:
            pass

        def on_batch(self, values: list[str]) -> tuple[list[Any], bool]:
            for v in values:
                seen[v] = threading.get_ident()
            return [], False

        def snapshot(self) -> None:
            return None

    flow = Dataflow("where")
    plain = [f"k{i}" for i in range(50)]
    src = op.input("in", flow, TestingSource(plain + keys))
    op.inspect("i", op.stateful_batch("st", op.key_on("k", src, lambda x: x), Where))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    thread_of_worker = {worker_of(k, workers): seen[k] for k in keys}
    for k in plain:
        assert seen[k] == thread_of_worker[worker_of(k, workers)]


# ----------------------------------------------------------------------------- merged input marks


def test_merged_marks_promise_the_lowest_channel_once_every_channel_has_spoken() -> None:
    merger = MarkMerger(["a#0", "a#1", "tx#0"], SOURCE_CHANNEL)
    st, out = merger.apply(None, [Mark("a#0", 50), Mark("a#1", 40)])
    assert out == []  # tx#0 not heard from: it may still send anything
    st, out = merger.apply(st, [Mark("tx#0", 45, ((10, 20),)), Mark("other#0", 1)])  # other#0: not an input
    assert out == [Mark(SOURCE_CHANNEL, 40, ((10, 20),))]
    st, out = merger.apply(st, [Mark("a#0", 60), Mark("a#0", 55)])  # the lowest did not move: nothing to say
    assert out == []
    st, out = merger.apply(st, [Mark("a#1", 70), Mark("tx#0", 65, ((30, 31),))])  # one mark per batch
    assert out == [Mark(SOURCE_CHANNEL, 60, ((30, 31),))]
    st, out = merger.apply(st, [Mark("tx#0", 66, ((62, 64),))])  # a span alone is passed on at once
    assert out == [Mark(SOURCE_CHANNEL, 60, ((62, 64),))]
    assert merger.apply(st.copy(), [Mark(c, END_MS) for c in ("a#0", "a#1", "tx#0")])[1] == [
        Mark(SOURCE_CHANNEL, END_MS)]


def test_a_stage_behind_merged_marks_releases_as_behind_the_channels_themselves() -> None:
    """The same items and marks, merged or not: the same releases, in the same order."""
    rng = random.Random(7)
    channels = [f"t#{p}" for p in range(5)]
    items = [Stamped("step", f"k{rng.randrange(4)}", rng.randrange(1, 200), (1, n), n) for n in range(60)]
    marks = [Mark(rng.choice(channels), rng.randrange(1, 220)) for _ in range(200)] + \
        [Mark(c, END_MS) for c in channels]
    direct, merged = Sequencer(channels), Sequencer([SOURCE_CHANNEL])
    merger = MarkMerger(channels, SOURCE_CHANNEL)
    d_state = m_state = g_state = None
    d_out: list[Any] = []
    m_out: list[Any] = []
    for i, item in enumerate(items):
        d_state, released = direct.apply(d_state, item)
        d_out += released
        m_state, released = merged.apply(m_state, item)
        m_out += released
        for mark in marks[i * 3:i * 3 + 3]:
            d_state, released = direct.apply(d_state, mark)
            d_out += released
        g_state, combined = merger.apply(g_state, marks[i * 3:i * 3 + 3])
        for mark in combined:
            m_state, released = merged.apply(m_state, mark)
            m_out += released
    for mark in marks[len(items) * 3:]:
        d_state, released = direct.apply(d_state, mark)
        d_out += released
    g_state, combined = merger.apply(g_state, marks[len(items) * 3:])
    for mark in combined:
        m_state, released = merged.apply(m_state, mark)
        m_out += released
    assert [(s.time, s.item) for s in m_out] == [(s.time, s.item) for s in d_out]
    assert len(d_out) == len(items)


def test_merged_marks_resumed_with_other_inputs_wait_for_every_current_one() -> None:
    """A snapshot from a run that read another set of partitions (a topic dropped, one captured since)."""
    before = MarkMerger(["old#0", "a#0"], SOURCE_CHANNEL)
    st, _ = before.apply(None, [Mark("old#0", 90), Mark("a#0", 80)])
    after = MarkMerger(["a#0", "new#0"], SOURCE_CHANNEL)
    st, out = after.apply(st.copy(), [Mark("a#0", 95)])
    assert out == []  # new#0 not heard from: it may still send anything
    st, out = after.apply(st, [Mark("new#0", 70)])
    assert out == []  # a promise never goes back: 80 was sent before
    st, out = after.apply(st, [Mark("new#0", 100)])
    assert out == [Mark(SOURCE_CHANNEL, 95)]


def test_read_groups_hold_every_channel_once_and_agree_with_read_group() -> None:
    topics = ("erp.erp.items", "wms.wms.inventory_balances", "commerce.orders")
    channels = [f"{t}#{p}" for t in topics for p in range(6)]
    groups = read_groups(channels, 4)
    assert sorted(c for members in groups.values() for c in members) == sorted(channels)
    assert all(read_group(c, 4) == g for g, members in groups.items() for c in members)
    assert all(members for members in groups.values()) and len(groups) > 1  # spread, no empty group
    assert read_groups(reversed(channels), 4) == groups  # a function of the set of channels


# ----------------------------------------------------------------------------- keys at rest are packed


class Republisher(Recorder):
    def republish(self, state: Any, key: str, stores: frozenset[str]) -> list[Any]:
        return [("republished", key, list(state), sorted(stores))]


def _items(key: str, *times: int) -> list[Stamped]:
    return [Stamped("s1", key, t, (t,), f"item-{t}", last=True) for t in times]


def test_a_key_at_rest_is_packed_at_its_snapshot_and_goes_on_as_if_it_never_was() -> None:
    never = _StepLogic(_Step("s1", Recorder(None), _route(None), 1), None)
    packed = _StepLogic(_Step("s1", Recorder(None), _route(None), 1), None)
    first, second = _items("k", 1, 2), _items("k", 3)
    outs_never = [*never.on_batch(first)[0], *never.on_batch(second)[0]]
    outs_packed = list(packed.on_batch(first)[0])
    snap = packed.snapshot()
    # the snapshot is the key and its state packed, and the step keeps only that until the key's next item
    assert isinstance(snap, bytes) and snap[0] == packing.ZSTD_1
    assert packing.unpack(snap) == ("k", [(1, "item-1"), (2, "item-2")])
    assert (packed.key, packed.state, packed.packed) == (None, None, snap)
    out, keep = packed.on_batch(second)
    assert [*outs_packed, *out] == outs_never and keep == StatefulBatchLogic.RETAIN
    assert packed.state == never.state and packed.packed is None
    assert packed.snapshot() == never.snapshot()  # a snapshot of the same state is the same bytes


def test_a_step_resumes_from_a_packed_snapshot_and_from_one_taken_before_packing() -> None:
    live = _StepLogic(_Step("s1", Recorder(None), _route(None), 1), None)
    live.on_batch(_items("k", 1, 2))
    snap = live.snapshot()
    expected = list(live.on_batch(_items("k", 5))[0])
    older = pickle.dumps(("k", [(1, "item-1"), (2, "item-2")]), protocol=pickle.HIGHEST_PROTOCOL)
    # packed; pickled without compression, and an object (both written by older releases)
    for resume in (snap, older, ("k", [(1, "item-1"), (2, "item-2")])):
        resumed = _StepLogic(_Step("s1", Recorder(None), _route(None), 1), resume)
        assert list(resumed.on_batch(_items("k", 5))[0]) == expected
        assert resumed.state == live.state


def test_a_packed_key_reseeds_a_store_with_its_state() -> None:
    live = _StepLogic(_Step("s1", Republisher(None), _route(None), 1), None)
    live.on_batch(_items("k", 1))
    resumed = _StepLogic(_Step("s1", Republisher(None), _route(None), 1, frozenset({"redis"})), live.snapshot())
    assert resumed.notify_at() is not None
    out, keep = resumed.on_notify()
    assert list(out) == [("republished", "k", [(1, "item-1")], ["redis"])] and keep == StatefulBatchLogic.RETAIN
