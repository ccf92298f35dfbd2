"""Available-to-sell (spec sections 5 and 8) as three pure reducers, keyed the way the flow runs them.

``OrderLines`` (keyed by ERP order id): header, lines and WMS allocations of one order -> for each
line, what it still commits: ``max(0, qty - wms_allocated)`` while the line is open and the order
is entered/released/on_hold/allocated, else 0. Emits a ``Commitment`` when that changes.

``Reservations`` (one key: the pending intakes): channel orders accepted by intake governance and
not yet in the ERP -> a ``Reservation`` per line, released when the ERP order appears, when the
ERP marks the intake failed, or when the channel's TTL passes (then ``intake_unconfirmed``).

``SkuLedger`` (keyed by SKU): stock per location, item master, commitments and reservations ->
``Availability`` per channel, throttled by ``min_publish_interval_ms`` of event time; raises
``oversold`` and ``unknown_sku``.

Every input row is fenced by its source position, so duplicates, replays and redelivery change
nothing. Time is event time (source commit timestamps), passed in; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from state import Tick, exception, newer, to_second
from state.channels import Channel
from state.records import Emit
from state.sla import Deadline

AVAILABILITY_SCHEMA = "io.erpsync.Availability"
# Source systems whose positions an Availability reflects; the order of Redis/ops-db fences.
POSITION_SYSTEMS = ("erp", "wms", "commerce", "clock")
_SYSTEM_INDEX = {system: i for i, system in enumerate(POSITION_SYSTEMS)}
COMMITTING_ORDER_STATUSES = frozenset({"entered", "released", "on_hold", "allocated"})

ORDER_TOPIC = "canonical.order"
ORDER_LINE_TOPIC = "canonical.order-line"
ALLOCATION_TOPIC = "canonical.allocation"
ORDER_INTAKE_TOPIC = "canonical.order-intake"
INVENTORY_TOPIC = "canonical.inventory-position"
ITEM_TOPIC = "canonical.item"


@dataclass(frozen=True, slots=True)
class Claim:
    """A quantity of a SKU that something holds, as of `version` of the state that decided it."""

    sku: str
    key: str  # what holds it; unique within the claim's kind
    qty: int
    version: int
    system: str  # the source system and position of the event that decided it
    position: str
    event_ms: int


class Commitment(Claim):
    """What one ERP order line still commits (key "<order_id>/<line_no>")."""

    __slots__ = ()


class Reservation(Claim):
    """What one accepted, not yet imported channel order line reserves (key "<channel>/<ext id>/<line>")."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class IntakeAccepted:
    """An order accepted by intake governance (an io.erpsync.AcceptedOrder value) at a commerce.orders position."""

    order: dict[str, Any]
    position: str
    event_ms: int


def _event_ms(event: Emit | Commitment | Reservation) -> int:
    if isinstance(event, Commitment | Reservation):
        return event.event_ms
    return int(event.value["source"]["commit_ts_ms"])


def _source(event: Emit) -> tuple[str, str, int]:
    src = event.value["source"]
    return src["system"], src["position"], src["commit_ts_ms"]


# ----------------------------------------------------------------------------- order lines


@dataclass(slots=True)
class OrderState:
    """One ERP order as far as availability cares. Deleted rows stay as fences (status None)."""

    header: tuple[str, str | None] | None = None  # (position, status)
    lines: dict[int, tuple[str, str, int, str | None]] = field(default_factory=dict)  # pos, sku, qty, status
    allocations: dict[int, tuple[str, int, int, str | None]] = field(default_factory=dict)  # pos, line, qty, status
    emitted: dict[int, tuple[str, int]] = field(default_factory=dict)  # line -> (sku, qty) told to the ledger
    version: int = 0

    def copy(self) -> OrderState:
        return OrderState(self.header, dict(self.lines), dict(self.allocations), dict(self.emitted), self.version)


class OrderLines:
    """Reducer for canonical.order, canonical.order-line and canonical.allocation, keyed by order id."""

    def apply(self, state: OrderState | None, event: Emit) -> tuple[OrderState, list[Commitment]]:
        st = state or OrderState()
        system, position, event_ms = _source(event)
        v = event.value
        deleted = v["op"] == "delete"
        if event.topic == ORDER_TOPIC:
            if not newer(st.header, position):
                return st, []
            st.header = (position, None if deleted else v["status"])
        elif event.topic == ORDER_LINE_TOPIC:
            line_no = v["line_no"]
            old = st.lines.get(line_no)
            if not newer(old, position):
                return st, []
            if deleted:
                st.lines[line_no] = (position, old[1] if old else "", 0, None)
            else:
                st.lines[line_no] = (position, v["sku"], v["qty"], v["status"])
        elif event.topic == ALLOCATION_TOPIC:
            alloc_id = v["allocation_id"]
            old_a = st.allocations.get(alloc_id)
            if not newer(old_a, position):
                return st, []
            if deleted:
                st.allocations[alloc_id] = (position, old_a[1] if old_a else -1, 0, None)
            else:
                st.allocations[alloc_id] = (position, v["line_no"], v["qty"], v["status"])
        else:
            return st, []
        return st, self._commitments(st, v["order_id"], system, position, event_ms)

    def _commitments(self, st: OrderState, order_id: int, system: str, position: str,
                     event_ms: int) -> list[Commitment]:
        header_open = st.header is not None and st.header[1] in COMMITTING_ORDER_STATUSES
        allocated: dict[int, int] = {}
        for _, line_no, qty, status in st.allocations.values():
            if status is not None and status != "cancelled":
                allocated[line_no] = allocated.get(line_no, 0) + qty
        out = []
        for line_no, (_, sku, qty, status) in st.lines.items():
            commits = max(0, qty - allocated.get(line_no, 0)) if header_open and status == "open" else 0
            before = st.emitted.get(line_no)
            if before == (sku, commits):
                continue
            if before is None and commits == 0:
                st.emitted[line_no] = (sku, 0)
                continue
            st.version += 1
            line_key = f"{order_id}/{line_no}"
            if before is not None and before[0] != sku:  # the line moved to another SKU
                out.append(Commitment(before[0], line_key, 0, st.version, system, position, event_ms))
            out.append(Commitment(sku, line_key, commits, st.version, system, position, event_ms))
            st.emitted[line_no] = (sku, commits)
        return out


# ----------------------------------------------------------------------------- reservations


@dataclass(slots=True)
class PendingIntakes:
    """Accepted channel orders waiting for the ERP, and recently settled ones (to ignore late repeats)."""

    pending: dict[str, tuple[int, list[tuple[int, str, int]]]] = field(default_factory=dict)  # accepted_ms, lines
    settled: dict[str, int] = field(default_factory=dict)  # key -> event ms it was settled
    now_ms: int = 0
    version: int = 0
    swept_ms: int = -1  # event second of the last TTL sweep: nothing can expire until time moves

    def copy(self) -> PendingIntakes:
        return PendingIntakes(dict(self.pending), dict(self.settled), self.now_ms, self.version, self.swept_ms)


class Reservations:
    """Reducer for intake reservations.

    One key holds every pending intake: they are few (orders on their way into the ERP), and one
    place sees event time advance for all of their TTLs. Event time reaches it with its own inputs
    and with ``Tick``s from every other source event, at one-second resolution, so that a quiet
    intake stream still expires on time and 1 and 2 workers agree on "now".
    """

    def __init__(self, channels: Sequence[Channel]) -> None:
        self.ttl_ms = {c.id: c.intake.intake_ttl_s * 1000 for c in channels}
        self.keep_settled_ms = 2 * max(self.ttl_ms.values(), default=0)

    def apply(self, state: PendingIntakes | None,
              event: IntakeAccepted | Emit | Tick) -> tuple[PendingIntakes, list[Reservation | Emit]]:
        st = state or PendingIntakes()
        out: list[Reservation | Emit] = []
        if isinstance(event, Tick):
            st.now_ms = max(st.now_ms, to_second(event.event_ms))
            # Releases it causes are fenced in the "clock" system: event seconds only move forward.
            system, position = "clock", f"{st.now_ms:015d}"
        elif isinstance(event, IntakeAccepted):
            order = event.order
            key = f"{order['channel']}/{order['external_order_id']}"
            system, position, event_ms = "commerce", event.position, event.event_ms
            st.now_ms = max(st.now_ms, to_second(event_ms))
            if key not in st.pending and key not in st.settled:
                lines = [(line["line_no"], line["sku"], line["qty"]) for line in order["lines"]]
                st.pending[key] = (event_ms, lines)
                out.extend(self._reserve(st, key, lines, True, system, position, event_ms))
        else:
            system, position, event_ms = _source(event)
            st.now_ms = max(st.now_ms, to_second(event_ms))
            v = event.value
            settles = v["op"] == "upsert" and (
                event.topic == ORDER_TOPIC or (event.topic == ORDER_INTAKE_TOPIC and v["status"] == "failed"))
            if settles:
                key = f"{v['channel']}/{v['external_order_id']}"
                if key in st.pending:
                    out.extend(self._release(st, key, system, position, event_ms))
                st.settled.setdefault(key, event_ms)
        out.extend(self._expire(st, system, position))
        return st, out

    def _reserve(self, st: PendingIntakes, key: str, lines: Iterable[tuple[int, str, int]], hold: bool,
                 system: str, position: str, event_ms: int) -> list[Reservation | Emit]:
        st.version += 1
        return [Reservation(sku, f"{key}/{line_no}", qty if hold else 0, st.version, system, position, event_ms)
                for line_no, sku, qty in lines]

    def _release(self, st: PendingIntakes, key: str, system: str, position: str,
                 event_ms: int) -> list[Reservation | Emit]:
        _, lines = st.pending.pop(key)
        st.settled[key] = event_ms
        return self._reserve(st, key, lines, False, system, position, event_ms)

    def _expire(self, st: PendingIntakes, system: str, position: str) -> list[Reservation | Emit]:
        out: list[Reservation | Emit] = []
        if st.now_ms == st.swept_ms:  # TTLs are whole seconds of event time: sweep once per second
            return out
        st.swept_ms = st.now_ms
        # Pending intakes are kept in acceptance order, so per channel the oldest come first: the
        # sweep stops looking at a channel at its first intake still within the TTL (an intake
        # accepted out of time order, from another partition, may wait for the one before it).
        expired, waiting = [], set()
        for key, (accepted_ms, _) in st.pending.items():
            channel = key.split("/", 1)[0]
            ttl = self.ttl_ms.get(channel)
            if ttl is None or channel in waiting:
                continue
            if accepted_ms + ttl <= st.now_ms:
                expired.append((key, accepted_ms, ttl))
            else:
                waiting.add(channel)
                if len(waiting) == len(self.ttl_ms):
                    break
        for key, accepted_ms, ttl in sorted(expired):
            out.extend(self._release(st, key, system, position, st.now_ms))
            out.append(exception(
                "intake_unconfirmed", "warning", "order_intake", key,
                f"accepted {st.now_ms - accepted_ms} ms ago, not in the ERP within the {ttl} ms TTL;"
                " its reservation is released", {"accepted_at_ms": accepted_ms}, st.now_ms))
        cutoff = st.now_ms - self.keep_settled_ms
        old = []
        for key, ms in st.settled.items():  # settled in time order too: stop at the first to keep
            if ms >= cutoff:
                break
            old.append(key)
        for key in old:
            del st.settled[key]
        return out


# ----------------------------------------------------------------------------- per-SKU ledger


@dataclass(slots=True)
class SkuState:
    """All that one SKU's availability depends on, plus what each channel was last told."""

    sku: str = ""
    stock: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)  # loc -> pos, on_hand, alloc, transit
    item: tuple[str, int, str] | None = None  # position, safety_stock, status ("absent" after a delete)
    # Memory matters here (a million SKUs): empty books are None, and small fixed-shape data is
    # kept in flat lists rather than dicts of lists.
    commitments: dict[str, tuple[int, int]] | None = None  # line -> (version, qty)
    reservations: dict[str, tuple[int, int]] | None = None  # intake line -> (version, qty)
    positions: list[str] = field(default_factory=lambda: [""] * len(POSITION_SYSTEMS))  # newest per system
    event_ms: int = 0
    version: int = 0  # inputs absorbed so far: orders changes that move no position (equal snapshot positions)
    # per channel, in channel order, 4 slots: published ats (-1: never), last publish ms,
    # due ms (0: nothing held), oversold (0/1)
    views: list[int] = field(default_factory=list)
    unknown_reported: bool = False

    def copy(self) -> SkuState:
        """An independent copy (what a snapshot needs), cheap: containers copied, tuples shared."""
        return replace(
            self, stock=dict(self.stock),
            commitments=None if self.commitments is None else dict(self.commitments),
            reservations=None if self.reservations is None else dict(self.reservations),
            positions=list(self.positions), views=list(self.views),
        )


LedgerInput = Emit | Commitment | Reservation


class SkuLedger:
    """Reducer for one SKU: applies an input, then publishes what the throttle allows."""

    def __init__(self, channels: Sequence[Channel], unknown_sku_ms: int = 60_000) -> None:
        self.channels = tuple(channels)
        self.unknown_sku_ms = unknown_sku_ms
        # Per channel, what the formula needs, precomputed: the hot path runs it for every event.
        self._plans = [
            (None if c.locations is None else frozenset(c.locations), c.include_in_transit,
             c.share_exact.numerator, c.share_exact.denominator)
            for c in self.channels
        ]

    def apply(self, state: SkuState | None, sku: str,
              event: LedgerInput) -> tuple[SkuState, list[Emit | Deadline]]:
        st = state or SkuState()
        out: list[Emit | Deadline] = []
        # What fell due before this event goes out first, at its due time: the same records whether
        # a live timer released it or (replay) the next event does.
        due = self.due_ms(st)
        if due is not None and _event_ms(event) >= due:
            st, out = self.flush(st, sku, due)
        if not self._absorb(st, event):
            return st, out
        out.extend(self._publish(st, sku, st.event_ms))
        return st, out

    def flush(self, state: SkuState, sku: str, now_ms: int) -> tuple[SkuState, list[Emit | Deadline]]:
        """Publish what is due by event time now_ms (a timer or the end of input)."""
        return state, self._publish(state, sku, now_ms, flush=True)

    def due_ms(self, state: SkuState) -> int | None:
        """Event time at which a held update falls due, if any."""
        return min((due for due in state.views[2::4] if due), default=None)

    def _absorb(self, st: SkuState, event: LedgerInput) -> bool:
        """Apply one input to the state; False when it is stale or a duplicate."""
        if isinstance(event, Commitment | Reservation):
            if isinstance(event, Commitment):
                book = st.commitments = st.commitments or {}
            else:
                book = st.reservations = st.reservations or {}
            old = book.get(event.key)
            if old is not None and event.version <= old[0]:
                return False
            book[event.key] = (event.version, event.qty)
            system, position, event_ms = event.system, event.position, event.event_ms
        else:
            system, position, event_ms = _source(event)
            v = event.value
            deleted = v["op"] == "delete"
            if event.topic == INVENTORY_TOPIC:
                if not newer(st.stock.get(v["location"]), position):
                    return False
                st.stock[v["location"]] = (position, 0, 0, 0) if deleted else (
                    position, v["on_hand"], v["allocated"], v["in_transit"])
            elif event.topic == ITEM_TOPIC:
                if not newer(st.item, position):
                    return False
                st.item = (position, 0, "absent") if deleted else (position, v["safety_stock"], v["status"])
            else:
                return False
        index = _SYSTEM_INDEX[system]
        if position > st.positions[index]:
            st.positions[index] = position
        st.event_ms = max(st.event_ms, event_ms)
        st.version += 1
        return True

    def compute(self, st: SkuState) -> list[dict[str, Any]]:
        """Each channel's ATS and its explanation (in channel order), straight from the spec's formula."""
        committed = sum(q for _, q in st.commitments.values()) if st.commitments else 0
        reserved = sum(q for _, q in st.reservations.values()) if st.reservations else 0
        status = "unknown" if st.item is None or st.item[2] == "absent" else st.item[2]
        safety = st.item[1] if st.item is not None and status != "unknown" else 0
        out = []
        for locations, in_transit_counts, numerator, denominator in self._plans:
            on_hand = allocated = in_transit = free = 0
            for location, (_, oh, al, tr) in st.stock.items():
                if locations is None or location in locations:
                    on_hand, allocated, in_transit = on_hand + oh, allocated + al, in_transit + tr
                    free += (oh - al if oh > al else 0) + (tr if in_transit_counts else 0)
            network = free - safety - committed - reserved
            ats = max(0, network * numerator // denominator) if status == "active" else 0
            out.append({"ats": ats, "on_hand": on_hand, "allocated": allocated, "in_transit": in_transit,
                        "committed_open": committed, "intake_reserved": reserved, "safety_stock": safety,
                        "network": network, "status": status})
        return out

    def _publish(self, st: SkuState, sku: str, now_ms: int, flush: bool = False) -> list[Emit | Deadline]:
        out = self._unknown_sku(st, sku)
        if len(st.views) != 4 * len(self.channels):  # new state, or the channel set changed
            st.views = [-1, 0, 0, 0] * len(self.channels)
        views = st.views
        for i, (channel, numbers) in enumerate(zip(self.channels, self.compute(st), strict=True)):
            at = 4 * i  # views[at:at + 4]: published ats, last publish ms, due ms, oversold
            if numbers["network"] < 0 or views[at + 3]:
                out.extend(self._exceptions(st, sku, channel, views, at, numbers))
            if numbers["ats"] == views[at]:
                views[at + 2] = 0  # back to the published value: nothing to send
                continue
            interval = channel.min_publish_interval_ms
            if views[at] >= 0 and now_ms < views[at + 1] + interval:
                views[at + 2] = views[at + 1] + interval  # hold: the final value goes out when it ends
                if not flush or now_ms < views[at + 2]:
                    continue
            published_at = max(now_ms, views[at + 2]) if views[at + 2] else now_ms
            views[at], views[at + 1], views[at + 2] = int(numbers["ats"]), published_at, 0
            positions = {system: p for system, p in zip(POSITION_SYSTEMS, st.positions, strict=True) if p}
            numbers.update(channel=channel.id, sku=sku, positions=positions, version=st.version,
                           event_time_ms=st.event_ms, published_at_ms=published_at)
            out.append(Emit(channel.topic, sku, AVAILABILITY_SCHEMA, numbers))
        return out

    def _exceptions(self, st: SkuState, sku: str, channel: Channel, views: list[int], at: int,
                    numbers: dict[str, Any]) -> list[Emit]:
        out = []
        # Sold more than there is: negative because of open orders or reservations, not because
        # the safety stock alone exceeds the stock (that is an empty shelf, not an oversell).
        promised = int(numbers["committed_open"]) + int(numbers["intake_reserved"])
        oversold = int(numbers["network"]) < 0 and promised > 0 and numbers["status"] == "active"
        if oversold and not views[at + 3]:
            out.append(exception("oversold", "error", "availability", f"{channel.id}/{sku}",
                                 f"network availability {numbers['network']} is below zero",
                                 {k: numbers[k] for k in sorted(numbers)}, st.event_ms))
        views[at + 3] = int(oversold)
        return out

    def _unknown_sku(self, st: SkuState, sku: str) -> list[Emit | Deadline]:
        """Arm (or disarm) the `unknown_sku` deadline.

        Raised only if the item master still lacks the SKU after `unknown_sku_ms` of event time:
        stock and item changes come through different topics, and a new item's stock often arrives
        first.
        """
        unknown = (st.item is None or st.item[2] == "absent") and bool(st.stock or st.commitments or st.reservations)
        reported, st.unknown_reported = st.unknown_reported, unknown
        if unknown == reported:
            return []
        if not unknown:
            return [Deadline("unknown_sku", sku, None, entity="item")]
        return [Deadline("unknown_sku", sku, st.event_ms + self.unknown_sku_ms,
                         "stock or orders exist for a SKU that is not in the item master",
                         (("locations", sorted(st.stock)),), entity="item")]


# ----------------------------------------------------------------------------- network for intake


@dataclass(frozen=True, slots=True)
class NetworkChange:
    """One SKU's network availability per channel *before* intake reservations (for intake validation).

    ``networks`` is in channel order: Σ free − safety stock − committed open; ``status`` is the
    item status ("unknown" when absent from the item master). ``version`` grows with every change.
    """

    sku: str
    version: int
    status: str
    networks: tuple[int, ...]
    event_ms: int


class SkuNetwork:
    """Reducer keyed by SKU: stock, item master and commitments -> ``NetworkChange`` when it changes.

    Intake governance must count earlier accepted orders, whose reservations it holds itself; so it
    needs the network *without* reservations, from a step that does not depend on intake (dataflows
    are acyclic). This is that step: the ledger's own absorb and formula, with no reservations and
    no publishing; ``views`` keeps what was last sent.
    """

    def __init__(self, channels: Sequence[Channel]) -> None:
        self.ledger = SkuLedger(channels)

    def apply(self, state: SkuState | None, sku: str,
              event: Emit | Commitment) -> tuple[SkuState, list[NetworkChange]]:
        st = state or SkuState(sku=sku)
        if not self.ledger._absorb(st, event):
            return st, []
        numbers = self.ledger.compute(st)
        status = numbers[0]["status"] if numbers else "unknown"
        sent = [-1 if status == "active" else 0, *(int(n["network"]) for n in numbers)]
        if sent == st.views:
            return st, []
        st.views = sent
        return st, [NetworkChange(sku, st.version, status, tuple(sent[1:]), st.event_ms)]
