"""Event-time order: every keyed step sees its inputs in the order of the sources' history.

Inputs reach a step along several paths (one Kafka partition per source table, intermediate steps
on several workers), so their arrival order depends on batching, worker count and how far each
partition has been read. A ``Sequencer`` restores a deterministic order: it buffers ``Stamped``
items and releases them sorted by ``(time, order)`` once every input channel has promised, with a
``Mark``, that nothing older will come. Ties are broken by the source system and its log position,
so the order is total and depends on the sources' histories only.

A released batch is cut at a watermark, never inside a source transaction (``Mark.spans`` carries
the closed transactions of each source: the watermark never falls inside one), and each item says
whether a step may *close* after it: whether, for its key, every transaction it has seen a part of
is complete there (``Stamped.tx``: the source transaction an item is part of, or was caused by). A
step evaluates exceptions and publishes only when it closes, so it only ever shows states that hold
a prefix of each source's transactions, and the same states whatever the batching.

Items may ask for a ``Wake`` at a later event time (throttles, TTLs, timers): the sequencer releases
it in order, once event time has passed it.

Nothing here reads a clock: live, the sources' idle marks come from wall time; in replay, from the
end of the input.
"""

from __future__ import annotations

import bisect
import heapq
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

END_MS = 2**62  # a channel that will send nothing more (end of a replay's input)
SOURCE_CHANNEL = "source"  # the input partitions' marks, merged per read group: "source#<group>" (``MarkMerger``)
WAKE_RANK = 9  # wakes come after every source item of their millisecond
Order = tuple[Any, ...]  # (source rank, source position, sub-order...) within one millisecond


@dataclass(frozen=True, slots=True)
class Mark:
    """Every item on `channel` with event time <= `ms` has been sent (the watermark of one input channel)."""

    channel: str
    ms: int
    spans: tuple[tuple[int, int], ...] = ()  # closed transactions (first ms, last ms) of this channel's system

    def __reduce__(self) -> tuple[Any, ...]:  # see state.records.Emit.__reduce__
        return (Mark, (self.channel, self.ms, self.spans))


@dataclass(slots=True)
class Stamped:
    """An item for the keyed step `step`, key `key`, at event time `time`; `last` is set on release."""

    step: str
    key: str
    time: int
    order: Order
    item: Any
    wake: int = 0  # ask for a Wake for this key at this event time (0: none)
    tx: Any = None  # the source transaction it is part of or caused by (None: a transaction of its own)
    last: bool = False  # the key's state after it holds only whole transactions: the step may close

    def __reduce__(self) -> tuple[Any, ...]:  # see state.records.Emit.__reduce__
        return (Stamped, (self.step, self.key, self.time, self.order, self.item, self.wake, self.tx, self.last))


@dataclass(frozen=True, slots=True)
class Wake:
    """Event time has reached `ms` for the key it is addressed to (asked for by an earlier item)."""

    ms: int


@dataclass(slots=True)
class SeqState:
    heap: list[tuple[int, Order, int, Stamped]] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)
    # closed transactions not yet wholly released, as sorted, disjoint (first ms, last ms) (``add_span``)
    spans: list[tuple[int, int]] = field(default_factory=list)
    released: int = -1  # the watermark released so far
    wakes: list[tuple[int, str, str]] = field(default_factory=list)  # (ms, step, key), a heap
    seq: int = 0  # arrival counter: keeps heap entries comparable, never decides order among equals
    late: int = 0  # items that arrived after the watermark had passed them (counted, released at once)

    def copy(self) -> SeqState:
        return SeqState(list(self.heap), dict(self.marks), list(self.spans), self.released, list(self.wakes),
                        self.seq, self.late)


class Sequencer:
    """Reducer of one sequencing shard: items and marks in, items in event-time order out."""

    def __init__(self, channels: Iterable[str]) -> None:
        self.channels = frozenset(channels)

    def apply(self, state: SeqState | None, item: Stamped | Mark) -> tuple[SeqState, list[Stamped]]:
        st = state or SeqState()
        if isinstance(item, Mark):
            return st, self._mark(st, item)
        if item.time <= st.released:  # a promise was broken upstream: keep going, in arrival order
            st.late += 1
            item.last = True
            return st, [item]
        st.seq += 1
        heapq.heappush(st.heap, (item.time, item.order, st.seq, item))
        if item.wake:
            heapq.heappush(st.wakes, (item.wake, item.step, item.key))
        return st, []

    def watermark(self, st: SeqState) -> int | None:
        """What every expected channel has promised, moved back so that no closed span is cut."""
        low = self._promised(st)
        return None if low is None else _uncut(st.spans, low)

    def _promised(self, st: SeqState) -> int | None:
        if not self.channels:
            return END_MS
        try:
            return min(st.marks[c] for c in self.channels)
        except KeyError:
            return None  # a channel not heard from yet may still send anything

    def _mark(self, st: SeqState, mark: Mark) -> list[Stamped]:
        if mark.channel not in self.channels:
            return []
        if mark.ms > st.marks.get(mark.channel, -1):
            st.marks[mark.channel] = mark.ms
        for first, last in mark.spans:
            # a span within one millisecond can never be cut: a watermark is a whole millisecond
            if last > st.released and last > first:
                add_span(st.spans, first, last)
        # The promise alone first: while it has not moved past what was released (a channel that is
        # behind), the spans need not be looked at (a replay buffers until its slowest channel moves).
        low = self._promised(st)
        if low is None or low <= st.released:
            return []
        low = _uncut(st.spans, low)
        if low <= st.released:
            return []
        return self.release(st, low)

    def release(self, st: SeqState, upto: int) -> list[Stamped]:
        """Everything buffered at or before `upto`, in order; each key's last item of an instant flagged."""
        out: list[Stamped] = []
        heap, wakes = st.heap, st.wakes
        while heap and heap[0][0] <= upto:
            out.append(heapq.heappop(heap)[3])
        if wakes and wakes[0][0] <= upto:
            due: set[tuple[int, str, str]] = set()
            while wakes and wakes[0][0] <= upto:
                due.add(heapq.heappop(wakes))
            out.extend(Stamped(step, key, ms, (WAKE_RANK,), Wake(ms)) for ms, step, key in sorted(due))
            out.sort(key=_position)
        st.released = upto
        spans = st.spans
        done = 0
        while done < len(spans) and spans[done][1] <= upto:  # (sorted by first and by last: disjoint)
            done += 1
        if done:
            del spans[:done]
        mark_closing(out)
        return out


@dataclass(slots=True)
class MergeState:
    marks: dict[str, int] = field(default_factory=dict)
    spans: list[tuple[int, int]] = field(default_factory=list)  # carried in, not yet sent on
    sent: int = -1

    def copy(self) -> MergeState:
        return MergeState(dict(self.marks), list(self.spans), self.sent)


def read_group(channel: str, groups: int) -> str:
    """The read group of an input channel: its partitions are read, and their marks merged, by one step."""
    return f"{SOURCE_CHANNEL}#{zlib.crc32(channel.encode()) % groups}"


def read_groups(channels: Iterable[str], groups: int) -> dict[str, list[str]]:
    """Read group -> its input channels (groups without any channel left out)."""
    out: dict[str, list[str]] = {}
    for channel in sorted(channels):
        out.setdefault(read_group(channel, groups), []).append(channel)
    return out


class MarkMerger:
    """The marks of many channels as the marks of one, `name`: the lowest promise, with every span carried.

    Every stage waits for every input partition, and a partition read to its end promises every few
    milliseconds: a hundred partitions send thousands of marks a second. Merged, a stage's shards see
    a few channels instead of a hundred, and one mark per batch of marks.

    The merge must happen where the channels' items are read (``flows.canonicalize``, one step per
    read group), never further on: a mark may only travel behind the items it covers. Merged in a
    step of its own, on whichever worker holds its key, the merged mark reached the shards of another
    process before the items it covered (a cluster replay released hundreds of items out of order).
    """

    def __init__(self, channels: Iterable[str], name: str) -> None:
        self.channels = frozenset(channels)
        self.name = name

    def apply(self, state: MergeState | None, marks: Iterable[Mark]) -> tuple[MergeState, list[Mark]]:
        st = state or MergeState()
        for mark in marks:
            if mark.channel not in self.channels:
                continue
            if mark.ms > st.marks.get(mark.channel, -1):
                st.marks[mark.channel] = mark.ms
            st.spans.extend(mark.spans)
        try:  # (a state resumed from a run with other inputs may hold channels no longer read)
            low = min(st.marks[c] for c in self.channels)
        except KeyError:
            return st, []  # a channel not heard from yet may still send anything
        except ValueError:
            return st, []  # no input channels: the stages do not wait for this one
        if low <= st.sent and not st.spans:
            return st, []
        st.sent = max(st.sent, low)
        # merged once here, not again in every shard of every stage (a span within one ms never counts)
        spans, st.spans = merged_spans([s for s in st.spans if s[1] > s[0]]), []
        return st, [Mark(self.name, st.sent, tuple(spans))]


def add_span(spans: list[tuple[int, int]], first: int, last: int) -> None:
    """Add the closed span (first, last) to `spans`, sorted and disjoint: merged with those it overlaps or meets.

    A watermark may not fall in ``[first, last)`` of any span; moved back before one, it may fall
    in an earlier one that overlaps or meets it, and so on. So spans that overlap or meet act as
    their union, and held merged a watermark is checked with one search (``_uncut``), not a scan
    of every span. A pipeline that is behind holds thousands of them (one per source transaction
    longer than a millisecond), and every shard checks them at every mark.
    """
    if not spans or first > spans[-1][1]:  # (most come in commit order: after every span held)
        spans.append((first, last))
        return
    if first >= spans[-1][0]:  # meets or overlaps only the newest (the others end before it starts)
        if last > spans[-1][1]:
            spans[-1] = (spans[-1][0], last)
        return
    i = bisect.bisect_right(spans, (first, END_MS))  # the first span starting after `first`
    if i and spans[i - 1][1] >= first:
        i -= 1
        first, last = spans[i][0], max(last, spans[i][1])
    j = i
    while j < len(spans) and spans[j][0] <= last:
        last = max(last, spans[j][1])
        j += 1
    spans[i:j] = [(first, last)]


def _uncut(spans: list[tuple[int, int]], low: int) -> int:
    """`low` moved back before the closed span it would cut (`spans`: sorted, disjoint; see ``add_span``)."""
    i = bisect.bisect_right(spans, (low, END_MS)) - 1
    if i >= 0 and spans[i][0] <= low < spans[i][1]:
        return spans[i][0] - 1
    return low


def merged_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans as ``add_span`` holds them (a shard's state snapshotted before they were held merged)."""
    out: list[tuple[int, int]] = []
    for first, last in spans:
        add_span(out, first, last)
    return out


def mark_closing(items: list[Stamped]) -> None:
    """Flag the items after which their key holds only whole transactions (and its last one)."""
    last_of: dict[tuple[str, str, Any], int] = {}
    for i, s in enumerate(items):
        if s.tx is not None:
            last_of[(s.step, s.key, s.tx)] = i
    open_until: dict[tuple[str, str], int] = {}
    for i, s in enumerate(items):
        key = (s.step, s.key)
        end = max(open_until.get(key, i), last_of.get((s.step, s.key, s.tx), i) if s.tx is not None else i)
        open_until[key] = end
        s.last = end == i


def _position(s: Stamped) -> tuple[int, Order]:
    return s.time, s.order
