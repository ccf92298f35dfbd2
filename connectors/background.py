"""Store sinks written off the worker thread: the dataflow works while a store answers.

The store sinks (Redis, the operations database, the ERP's intake table) write a batch with one
round trip and wait for it. Written by the worker itself, every batch held the dataflow for that
wait: in a live run at 1,000 changes/s the worker spent a quarter of its time waiting for Redis and
PostgreSQL, and small batches (one per mark) made it worse. ``output`` runs such a sink on writer
threads of its own:

- **Parts.** The sink has ``flows.output_parts`` parts, each with one writer thread; a record goes
  to the part of its key (a stable hash), so one key's records are written by one thread, in order.
- **Queue and coalescing.** ``write_batch`` queues the records and returns. The writer takes
  everything queued since its last write (up to ``MAX_WRITE``) as one batch: a backlog costs one
  round trip, not one per dataflow batch, and the sinks keep only each key's newest version of it.
- **Durability, as before.** bytewax calls ``snapshot()`` at the end of every epoch in which the
  part took records, and the epoch is durable only once every snapshot of it is. ``snapshot()``
  returns once everything queued is written, so the records of an epoch are in the store before
  the epoch can be resumed from; a crash re-delivers the rest, and the position fences make that
  harmless, exactly as when the worker wrote them itself.
- **Backpressure.** At most ``limit`` records wait per part; beyond that, ``write_batch`` waits. A
  store outage holds the worker, as before (the writer waits it out in ``guarded``), and memory
  stays bounded.
- **Failures.** An error the writer meets is raised in the worker at its next call to the part
  (``write_batch``, ``snapshot`` or ``close``), and the dataflow fails as it did before.
"""

from __future__ import annotations

import threading
import zlib
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition

from state.records import Emit

MAX_WRITE = 5_000  # records per write: one transaction or pipeline of bounded size
LIMIT = 20_000  # records waiting per part before write_batch waits
_WAIT_S = 0.5  # the worker's waits wake this often (signals reach the main thread between them)


def part_of(key: str, parts: int) -> int:
    """The part that writes `key`'s records (stable across runs and processes, unlike ``hash``)."""
    return zlib.crc32(key.encode()) % parts


def output(step_id: str, stream: Stream[Emit], sink: DynamicSink[Emit], parts: int, *, limit: int = LIMIT) -> None:
    """Write `stream` with `sink`'s partitions, each on a writer thread (see the module doc)."""
    keyed = op.map(f"{step_id}_to_part", stream, lambda e: (str(part_of(e.key, parts)), e))
    op.output(step_id, keyed, Background(sink, parts, limit))


class Background(FixedPartitionedSink[Emit, None]):
    """`sink`'s partitions run by writer threads, one per part; nothing to resume (the state is None)."""

    def __init__(self, sink: DynamicSink[Emit], parts: int, limit: int = LIMIT) -> None:
        self.sink, self.parts, self.limit = sink, parts, limit

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        return int(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> Writer:
        part = int(for_part)
        return Writer(self.sink.build(step_id, part, self.parts), f"{step_id}#{part}", self.limit)


class Writer(StatefulSinkPartition[Emit, None]):
    """One part: a queue, and the thread that writes it with the wrapped partition."""

    def __init__(self, inner: StatelessSinkPartition[Emit], name: str, limit: int = LIMIT) -> None:
        self.inner, self.name, self.limit = inner, name, limit
        self.cond = threading.Condition()
        self.queued: list[Emit] = []
        self.busy = False  # a write is in progress
        self.closing = False
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None  # started with the first records

    def write_batch(self, items: list[Emit]) -> None:
        if not items:
            return
        with self.cond:
            self._wait(lambda: len(self.queued) < self.limit)
            self.queued.extend(items)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
                self.thread.start()
            self.cond.notify_all()

    def snapshot(self) -> None:
        """Returns once everything queued is written: the epoch's records are in the store."""
        with self.cond:
            self._wait(lambda: not self.queued and not self.busy)

    def close(self) -> None:
        try:
            if self.error is None:
                self.snapshot()  # what the dataflow handed over before it ended is written
        finally:
            with self.cond:
                self.closing = True
                self.cond.notify_all()
            if self.thread is not None:
                self.thread.join()
            self.inner.close()

    def _wait(self, ready: Any) -> None:
        """Wait (holding the condition) until `ready()`; raise the writer's error if it has one."""
        while self.error is None and not ready():
            self.cond.wait(_WAIT_S)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queued and not self.closing:
                    self.cond.wait()
                if not self.queued:
                    return
                batch, self.queued = self.queued[:MAX_WRITE], self.queued[MAX_WRITE:]
                self.busy = True
                self.cond.notify_all()  # room in the queue
            try:
                self.inner.write_batch(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the worker, raised there
                with self.cond:
                    self.error, self.busy = exc, False
                    self.cond.notify_all()
                return
            with self.cond:
                self.busy = False
                self.cond.notify_all()
