"""Store sinks on writer threads (connectors.background).

The worker does not wait for a store, and an epoch's records are written by its end.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main

from connectors import background
from connectors.background import Writer
from state.records import Emit


def emit(key: str, n: int) -> Emit:
    return Emit("t", key, "s", {"n": n}, n, (0,))


class Store(StatelessSinkPartition[Emit]):
    """A partition that records its writes; a write waits while `gate` is clear, or raises `fail`."""

    def __init__(self) -> None:
        self.writes: list[list[Emit]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail: BaseException | None = None
        self.closed = False

    def write_batch(self, items: list[Emit]) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        self.writes.append(list(items))

    def close(self) -> None:
        self.closed = True


def in_thread(fn: Any) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def busy_writer(limit: int = background.LIMIT) -> tuple[Store, Writer]:
    """A writer whose thread is inside the store's write of record 0, held there until `store.gate` is set."""
    store = Store()
    store.gate.clear()
    part = Writer(store, "test", limit=limit)
    part.write_batch([emit("a", 0)])
    assert store.entered.wait(5)
    return store, part


def test_the_worker_does_not_wait_for_the_store_but_the_snapshot_does() -> None:
    store = Store()
    store.gate.clear()
    part = Writer(store, "test")
    start = time.perf_counter()
    part.write_batch([emit("a", 1)])
    assert time.perf_counter() - start < 0.5  # queued; the write waits on the writer thread
    assert store.entered.wait(5)
    snapshot = in_thread(part.snapshot)
    snapshot.join(0.3)
    assert snapshot.is_alive() and store.writes == []  # the epoch cannot end before its records are written
    store.gate.set()
    snapshot.join(5)
    assert not snapshot.is_alive()
    assert store.writes == [[emit("a", 1)]]
    part.close()
    assert store.closed


def test_batches_queued_during_a_write_are_written_together_in_order() -> None:
    store, part = busy_writer()
    for n in (2, 3, 4):
        part.write_batch([emit("a", n), emit("b", n)])
    store.gate.set()
    part.snapshot()
    assert [[e.value["n"] for e in w] for w in store.writes] == [[0], [2, 2, 3, 3, 4, 4]]
    part.close()


def test_a_write_takes_at_most_max_write_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "MAX_WRITE", 3)
    store, part = busy_writer()
    part.write_batch([emit("a", n) for n in range(1, 8)])
    store.gate.set()
    part.snapshot()
    assert [len(w) for w in store.writes] == [1, 3, 3, 1]
    assert [e.value["n"] for w in store.writes for e in w] == list(range(8))
    part.close()


def test_a_full_queue_holds_the_worker_until_the_writer_takes_it() -> None:
    store, part = busy_writer(limit=4)
    part.write_batch([emit("a", n) for n in range(1, 5)])  # 4 waiting: the limit
    blocked = in_thread(lambda: part.write_batch([emit("a", 5)]))
    blocked.join(0.3)
    assert blocked.is_alive()  # backpressure: memory stays bounded while the store is slow or away
    store.gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    part.snapshot()
    assert [e.value["n"] for w in store.writes for e in w] == list(range(6))
    part.close()


def test_an_error_of_the_writer_is_raised_in_the_worker() -> None:
    store = Store()
    store.fail = ValueError("the store refused the batch")
    part = Writer(store, "test")
    part.write_batch([emit("a", 1)])
    with pytest.raises(ValueError, match="refused the batch"):
        part.snapshot()
    with pytest.raises(ValueError, match="refused the batch"):
        part.write_batch([emit("a", 2)])
    part.close()  # does not wait for a writer that has stopped
    assert store.closed


def test_close_writes_what_was_queued() -> None:
    store = Store()
    store.gate.clear()
    part = Writer(store, "test")
    part.write_batch([emit("a", 1)])
    part.write_batch([emit("a", 2)])
    threading.Timer(0.2, store.gate.set).start()
    part.close()
    assert [e.value["n"] for w in store.writes for e in w] == [1, 2] and store.closed


class Recording(DynamicSink[Emit]):
    """Every part's writes, by part (a slow store: each write takes a millisecond)."""

    def __init__(self) -> None:
        self.parts: dict[int, Store] = {}

    def build(self, step_id: str, worker_index: int, worker_count: int) -> Store:
        store = self.parts[worker_index] = Store()
        return store


def test_in_a_dataflow_every_record_is_written_once_and_each_keys_in_order() -> None:
    items = [emit(f"sku-{i % 37}", i) for i in range(3000)]
    sink = Recording()
    flow = Dataflow("background_test")
    background.output("out", op.input("in", flow, TestingSource(items, batch_size=7)), sink, parts=3)
    run_main(flow)
    assert len(sink.parts) == 3
    written = {p: [e for w in s.writes for e in w] for p, s in sink.parts.items()}
    assert sorted(e.value["n"] for es in written.values() for e in es) == list(range(3000))
    for p, es in written.items():
        assert {background.part_of(e.key, 3) for e in es} == {p}  # a key is written by its part only
    by_key: dict[str, list[int]] = {}
    for es in written.values():
        for e in es:
            by_key.setdefault(e.key, []).append(e.value["n"])
    assert all(ns == sorted(ns) for ns in by_key.values())
    assert all(s.closed for s in sink.parts.values())
