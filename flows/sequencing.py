"""Sequenced stages: keyed steps that see their inputs in event-time order (see ``state.sequencer``).

A stage is two bytewax steps:

- the *shards* (``<stage>_shards``, keys ``"0"`` .. ``"n-1"``): every item for the stage's keyed steps
  passes through the shard of its (step, key), which buffers it until every input channel's
  ``Mark`` has passed its time, then releases it in order. Marks are sent to every shard.
- the *keyed steps* (one per reducer, keyed by entity): each key receives its items from exactly one
  shard, over one worker-to-worker channel, so it sees them in the order released. A step emits
  what its reducer returns; outputs addressed to later steps become ``Stamped`` at the time of the
  item that caused them.

Watermarks travel with the data. After a release a shard sends a ``Fence`` to every worker of every
keyed step it feeds, on the same channels as the items, addressed to a per-worker key that sorts
after every entity key (bytewax runs a batch's keys in key order). When that key has seen the fence
of every shard, everything released before it has been applied on that worker, and it forwards a
``Mark`` for the channel ``<step>@<worker>`` to the stages downstream. To address a worker, the fence
keys are chosen with bytewax's own routing function (``worker_of``: Rust's SipHash-1-3 with zero
keys over the key's bytes, modulo the worker count; ``tests/flow`` checks it against bytewax).

Keys at rest are packed. A keyed step holds one state per SKU, order or customer ever seen, and most
of them rest for long stretches; as Python objects a SKU's state took about 4 KB. bytewax snapshots
a key at the end of every epoch in which it had items, so that is where the step packs the key and
its state (pickled, then compressed with a fixed zstd dictionary: ``flows.packing``) and drops the
objects; the key's next item unpacks them. The packed bytes are the snapshot (nothing is copied)
and what the recovery store writes. A state unpacked is equal to the one packed, so outputs do not
depend on when keys were packed.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from erpsync import telemetry
from flows import packing
from state.records import DeadLetter, Emit, RawRecord
from state.sequencer import Mark, SeqState, Sequencer, Stamped, merged_spans

log = logging.getLogger(__name__)
FENCE_PREFIX = "\U0010ffff\U0010ffff"  # sorts after any entity key (UTF-8 bytes F4 8F BF BF)


# ----------------------------------------------------------------------------- routing to workers

_M = 0xFFFFFFFFFFFFFFFF


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with keys (0, 0): what Rust's ``DefaultHasher::new()`` computes."""
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573

    def sip_round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
        v0 = (v0 + v1) & _M
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _M
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _M
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _M
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)
        return v0, v1, v2, v3

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = sip_round(v0, v1, v2, v3)
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= b
    v0, v1, v2, v3 = sip_round(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker bytewax runs a stateful step's `key` on (a Rust ``String`` hashes its bytes, then 0xFF)."""
    return siphash13(key.encode() + b"\xff") % workers


def fence_keys(workers: int) -> list[str]:
    """One key per worker, each routed to that worker, each sorting after every entity key."""
    keys: list[str | None] = [None] * workers
    n = 0
    while any(k is None for k in keys):
        candidate = f"{FENCE_PREFIX}{n}"
        w = worker_of(candidate, workers)
        if keys[w] is None:
            keys[w] = candidate
        n += 1
    return [k for k in keys if k is not None]


# ----------------------------------------------------------------------------- the pieces

RESEED_SPREAD_S = 10


def failed(step: str, key: str, item: Any, exc: Exception) -> DeadLetter:
    """An item a step failed on, as a dead letter: the item as JSON, the step and the error."""
    log.warning("%s failed on an item for key %r: %s: %s; sent to the DLQ", step, key, type(exc).__name__, exc)
    telemetry.count(step, "dlq")
    value = item.value if isinstance(item, Emit) else getattr(item, "__dict__", None) or repr(item)
    payload = json.dumps(value, default=repr, sort_keys=True).encode()
    raw = RawRecord(f"step:{step}", -1, -1, key.encode(), payload, getattr(item, "time", 0) or 0)
    return DeadLetter(raw, f"{step} failed: {type(exc).__name__}: {exc}"[:1000], step)



@dataclass(frozen=True, slots=True)
class Fence:
    """Shard `shard` has released everything up to `ms` to the keyed steps on worker `worker`."""

    shard: int
    worker: int
    ms: int


class KeyedReducer(Protocol):
    """A pure per-key reducer run by a sequenced step (``state`` modules implement it)."""

    def apply(self, state: Any, key: str, item: Any, time: int) -> tuple[Any, list[Any]]: ...

    def close(self, state: Any, key: str, time: int) -> tuple[Any, list[Any]]: ...


# (step, key, wake) destinations of an output produced at event time `time`; none: it leaves the stages
Route = Callable[[Any, int], Iterable[tuple[str, str, int]]]


class _ShardLogic(StatefulBatchLogic[Any, Any, SeqState]):
    def __init__(self, stage_id: str, sequencer: Sequencer, resume: SeqState | None, targets: Sequence[str],
                 fences: Sequence[str]) -> None:
        self.stage_id = stage_id
        self.sequencer = sequencer
        self.state = resume or SeqState()
        self.state.spans = merged_spans(self.state.spans)  # (held merged since 2026-12-01: older snapshots)
        self.targets = targets
        self.fences = fences
        self.shard = -1

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        apply = self.sequencer.apply
        before, late = self.state.released, self.state.late
        for value in values:
            if isinstance(value, tuple):  # (shard id, mark): marks are sent to every shard
                self.shard, value = value
            self.state, released = apply(self.state, value)
            out.extend(released)
        if self.state.late > late:  # a watermark promise was broken upstream: order is not guaranteed
            telemetry.count(self.stage_id, "late", self.state.late - late)
            log.warning("%s: %d item(s) arrived behind the watermark (%d in all)", self.stage_id,
                        self.state.late - late, self.state.late)
        if self.state.released > before and self.shard >= 0:
            ms = self.state.released
            for step in self.targets:
                out.extend(Stamped(step, key, ms, (), Fence(self.shard, w, ms)) for w, key in enumerate(self.fences))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> SeqState:
        return self.state.copy()


@dataclass(slots=True)
class _FenceState:
    """A per-worker fence key: the newest fence of each shard, and the mark forwarded last."""

    shards: dict[int, int]
    sent: int = -1


@dataclass(frozen=True, slots=True)
class _Step:
    """What every key of a keyed step shares (held once, not by each key's logic)."""

    step: str
    reducer: KeyedReducer
    route: Route
    shards: int
    reseed: frozenset[str] = frozenset()


class _StepLogic(StatefulBatchLogic[Stamped, Any, Any]):
    """Runs a keyed reducer over released items; the per-worker fence keys forward marks instead.

    An item the reducer fails on becomes a dead letter naming the step and the error (the state is
    kept as it was left); the key goes on with its next item. Built from a snapshot while `reseed`
    names stores that lost their data, it re-publishes its key's current values to them
    (``republish``), spread over ``RESEED_SPREAD_S`` so a large state does not come out at once.
    One exists per key (millions at a distributor's scale), so it holds only what is the key's own.
    """

    def __init__(self, spec: _Step, resume: bytes | tuple[str | None, Any] | None) -> None:
        self.spec = spec
        self.key: str | None = None  # the key, known while its state is unpacked (or a fence key's)
        self.state: Any = None
        self.packed: bytes | None = None  # (key, state) packed while the key rests (see `snapshot`)
        if isinstance(resume, bytes):
            self.packed = resume
        elif resume is not None:  # a fence key's snapshot, or one taken before states were packed
            self.key, self.state = resume
        self.reseed_at: datetime | None = None
        republish = getattr(spec.reducer, "republish", None)
        if spec.reseed and self._has_state() and republish is not None and not isinstance(self.state, _FenceState):
            self._unpacked()  # (rare: its stores lost their data)
            spread = zlib.crc32(f"{spec.step}|{self.key}".encode()) % (RESEED_SPREAD_S * 1000)
            self.reseed_at = datetime.now(UTC) + timedelta(milliseconds=spread)

    def _has_state(self) -> bool:
        return self.state is not None or self.packed is not None

    def _unpacked(self) -> Any:
        if self.packed is not None:
            (self.key, self.state), self.packed = packing.unpack(self.packed), None
        return self.state

    def notify_at(self) -> datetime | None:
        return self.reseed_at

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        if self.reseed_at is None:
            return [], self._keep()
        self.reseed_at = None
        republish = getattr(self.spec.reducer, "republish")  # noqa: B009 - reducers that can re-seed have it
        state = self._unpacked()
        return republish(state, self.key, self.spec.reseed), self._keep()

    def _keep(self) -> bool:
        return StatefulBatchLogic.RETAIN if self._has_state() else StatefulBatchLogic.DISCARD

    def on_batch(self, values: list[Stamped]) -> tuple[Iterable[Any], bool]:
        if isinstance(values[0].item, Fence):
            return self._fences(values), StatefulBatchLogic.RETAIN
        out: list[Any] = []
        step, reducer, route = self.spec.step, self.spec.reducer, self.spec.route
        self._unpacked()
        key = self.key = values[0].key
        for s in values:
            try:
                self.state, outs = reducer.apply(self.state, key, s.item, s.time)
                if s.last:
                    self.state, closing = reducer.close(self.state, key, s.time)
                    outs.extend(closing)
            except Exception as exc:  # noqa: BLE001 - one item must not stop the pipeline
                out.append(failed(step, key, s.item, exc))
                continue
            # what one item causes is applied downstream as one transaction: its own, or the item itself
            tx = s.tx if s.tx is not None else (step, key, s.time, s.order)
            for i, o in enumerate(outs):
                targets = list(route(o, s.time))
                if not targets:
                    out.append(o)
                    continue
                order = (*s.order, i)
                out.extend(Stamped(to, k, s.time, order, o, wake, tx) for to, k, wake in targets)
        telemetry.count(step, "in", len(values))
        telemetry.count(step, "out", len(out))
        return out, self._keep()

    def _fences(self, values: list[Stamped]) -> list[Mark]:
        self.key = values[0].key
        st = self.state if isinstance(self.state, _FenceState) else _FenceState({})
        self.state = st
        worker = values[0].item.worker
        for s in values:
            fence = s.item
            if fence.ms > st.shards.get(fence.shard, -1):
                st.shards[fence.shard] = fence.ms
        if len(st.shards) < self.spec.shards:
            return []
        low = min(st.shards.values())
        if low <= st.sent:
            return []
        st.sent = low
        return [Mark(f"{self.spec.step}@{worker}", low)]

    def snapshot(self) -> bytes | tuple[str | None, Any] | None:
        """The key and its state, packed; called at the end of every epoch in which the key had items.

        They stay packed until the key's next item: most keys of a distributor (SKUs, orders) rest
        for many epochs. A SKU's two states take about 4.1 KB as objects, 860 bytes pickled and
        about 250 bytes packed (``python -m bench.packing_dictionary``). The packed bytes are also
        the snapshot (no copy), and the recovery store takes bytes as they are. A fence key (one
        per worker, busy) is not packed.
        """
        if isinstance(self.state, _FenceState):
            return self.key, _FenceState(dict(self.state.shards), self.state.sent)
        if self.state is not None:
            self.packed = packing.pack((self.key, self.state))
            self.key = self.state = None
        return self.packed


# ----------------------------------------------------------------------------- building a stage


@dataclass(frozen=True)
class StageStep:
    """A keyed step of a stage: its reducer and where its outputs go (`route`)."""

    reducer: KeyedReducer
    route: Route


def shard_of(step: str, key: str, shards: int) -> str:
    """The shard an item passes through: stable across processes and restarts (Python's str hash is not)."""
    return str(zlib.crc32(f"{step}|{key}".encode()) % shards)


def stage(stage_id: str, items: Stream[Stamped], marks: Stream[Mark], channels: Iterable[str],
          steps: dict[str, StageStep], *, workers: int, shards: int,
          reseed: frozenset[str] = frozenset()) -> tuple[Stream[Any], Stream[Mark]]:
    """Sequence `items` (for the keyed `steps`) by event time; returns (step outputs, marks for downstream).

    `channels`: every channel whose marks this stage waits for (the read groups' merged input
    partitions, "source#<group>", and the steps@worker upstream).
    `workers`: the dataflow's total worker count; `shards`: fixed for a recovery directory;
    `reseed`: stores that lost their data, which the steps resumed from a snapshot re-publish to.
    """
    n = shards
    sequencer = Sequencer(channels)
    fence_to = fence_keys(workers)
    targets = sorted(steps)
    keyed = op.key_on(f"{stage_id}_to_shard", items, lambda s: shard_of(s.step, s.key, n))
    broadcast = op.flat_map(f"{stage_id}_marks_to_shards", marks,
                            lambda m: [(str(i), (i, m)) for i in range(n)])
    shard_in = op.merge(f"{stage_id}_shard_in", keyed, broadcast)
    released = op.key_rm(f"{stage_id}_released", op.stateful_batch(
        f"{stage_id}_shards", shard_in, lambda resume: _ShardLogic(stage_id, sequencer, resume, targets, fence_to)))
    outputs = [_keyed_step(step_id, steps[step_id], released, n, reseed) for step_id in targets]
    merged = op.merge(f"{stage_id}_outputs", *outputs)
    split = op.branch(f"{stage_id}_is_mark", merged, lambda o: isinstance(o, Mark))
    return split.falses, split.trues


def _keyed_step(step_id: str, spec: StageStep, released: Stream[Any], shards: int,
                reseed: frozenset[str]) -> Stream[Any]:
    mine: Stream[Stamped] = op.filter(f"{step_id}_items", released, lambda s: s.step == step_id)
    keyed_items = op.key_on(f"{step_id}_by_key", mine, lambda s: s.key)

    shared = _Step(step_id, spec.reducer, spec.route, shards, reseed)

    def build(resume: bytes | tuple[str | None, Any] | None) -> _StepLogic:
        return _StepLogic(shared, resume)

    return op.key_rm(f"{step_id}_unkey", op.stateful_batch(step_id, keyed_items, build))
