"""Available-to-sell (spec sections 5 and 8) as three keyed reducers, in event-time order.

``OrderLines`` (key: ERP order id): header, lines and WMS allocations of one order -> for each line,
what it still commits: ``max(0, qty - wms_allocated)`` while the line is open and the order is
entered/released/on_hold/allocated. Emits a ``Commitment`` per line when that changes.

``SkuNetwork`` (key: SKU): the one copy of a SKU's stock per location, its item master row, its
price lines and the commitments of its order lines -> ``NetworkState``: per channel id, free stock
and the explanation fields, before intake reservations. It also answers intake's ``LineCheck`` with
the state as of the order's time (the check arrives in event-time order).

``SkuAts`` (key: SKU): a ``NetworkState`` and the intake reservations of the SKU -> ``Availability``
per channel, at most once per ``min_publish_interval_ms`` of event time; raises (and resolves)
``oversold`` and arms ``unknown_sku`` timers.

The reducers run under ``flows.sequencing``: each key sees its inputs in event-time order and is
told when an *instant* ends (``close``): every state change of one source transaction is applied
before anything is computed or published, so a published value always reflects a prefix of each
source's transactions. Rows are still fenced by source position: a redelivered change is ignored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from state import exception, newer
from state.channels import Channel
from state.records import Emit, Reseed, pickled_by_position
from state.sequencer import Wake
from state.timers import Deadline, arm, overdue

AVAILABILITY_SCHEMA = "io.erpsync.Availability"
POSITION_SYSTEMS = ("erp", "wms", "commerce")
COMMITTING_ORDER_STATUSES = frozenset({"entered", "released", "on_hold", "allocated"})
CLOSED_ORDER_STATUSES = frozenset({"closed", "cancelled"})

ORDER_TOPIC = "canonical.order"
ORDER_LINE_TOPIC = "canonical.order-line"
ALLOCATION_TOPIC = "canonical.allocation"
ORDER_INTAKE_TOPIC = "canonical.order-intake"
INVENTORY_TOPIC = "canonical.inventory-position"
ITEM_TOPIC = "canonical.item"
PRICE_TOPIC = "canonical.price"


def source_of(event: Emit) -> tuple[str, str]:
    src = event.value["source"]
    return src["system"], src["position"]


# ----------------------------------------------------------------------------- order lines


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Commitment:
    """What ERP order line `line` ("<order id>/<line no>") still commits of `sku` (0: nothing)."""

    sku: str
    line: str
    qty: int
    system: str = "erp"
    position: str = ""


@pickled_by_position
@dataclass(slots=True)
class OrderState:
    """One ERP order as far as availability cares. Deleted rows stay as fences until the order closes."""

    header: tuple[str, str] | None = None  # (position, status; "deleted" after a delete)
    lines: dict[int, tuple[str, str, int, str]] = field(default_factory=dict)  # pos, sku, qty, status
    allocations: dict[int, tuple[str, int, int, str]] = field(default_factory=dict)  # pos, line, qty, status
    emitted: dict[int, tuple[str, int]] = field(default_factory=dict)  # line -> (sku, qty) told to the network
    source: tuple[str, str] = ("erp", "")  # the newest change applied (system, position)



class OrderLines:
    """Keyed by ERP order id: canonical order, order-line and allocation events -> ``Commitment`` changes."""

    def apply(self, state: OrderState | None, key: str, item: Any, time: int) -> tuple[OrderState | None, list[Any]]:
        if not isinstance(item, Emit):
            return state, []
        st = state or OrderState()
        v = item.value
        system, position = source_of(item)
        deleted = v["op"] == "delete"
        if item.topic == ORDER_TOPIC:
            if not newer(st.header, position):
                return st, []
            st.header = (position, "deleted" if deleted else v["status"])
        elif item.topic == ORDER_LINE_TOPIC:
            line_no = v["line_no"]
            old = st.lines.get(line_no)
            if not newer(old, position):
                return st, []
            st.lines[line_no] = (position, old[1] if old else "", 0, "deleted") if deleted else \
                (position, v["sku"], v["qty"], v["status"])
        elif item.topic == ALLOCATION_TOPIC:
            alloc_id = v["allocation_id"]
            old_a = st.allocations.get(alloc_id)
            if not newer(old_a, position):
                return st, []
            st.allocations[alloc_id] = (position, old_a[1] if old_a else -1, 0, "deleted") if deleted else \
                (position, v["line_no"], v["qty"], v["status"])
        else:
            return st, []
        st.source = (system, position)
        return st, []

    def close(self, state: OrderState | None, key: str, time: int) -> tuple[OrderState | None, list[Any]]:
        if state is None:
            return None, []
        st = state
        header_open = st.header is not None and st.header[1] in COMMITTING_ORDER_STATUSES
        allocated: dict[int, int] = {}
        for _, line_no, qty, status in st.allocations.values():
            if status not in ("cancelled", "deleted"):
                allocated[line_no] = allocated.get(line_no, 0) + qty
        out: list[Any] = []
        system, position = st.source
        for line_no, (_, sku, qty, status) in sorted(st.lines.items()):
            commits = max(0, qty - allocated.get(line_no, 0)) if header_open and status == "open" else 0
            before = st.emitted.get(line_no)
            if before == (sku, commits) or (before is None and commits == 0):
                continue
            line_key = f"{key}/{line_no}"
            if before is not None and before[0] != sku and before[1]:  # the line moved to another SKU
                out.append(Commitment(before[0], line_key, 0, system, position))
            out.append(Commitment(sku, line_key, commits, system, position))
            st.emitted[line_no] = (sku, commits)
        if st.header is not None and st.header[1] in (*CLOSED_ORDER_STATUSES, "deleted") \
                and not any(q for _, q in st.emitted.values()):
            return None, out  # nothing committed any more: forget the order
        return st, out



# ----------------------------------------------------------------------------- per-SKU network


@pickled_by_position
@dataclass(frozen=True, slots=True)
class PriceLine:
    unit_price: Decimal
    valid_from: int  # days since the epoch
    valid_to: int | None

    def valid_on(self, day: int) -> bool:
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)


@pickled_by_position
@dataclass(frozen=True, slots=True)
class LineCheck:
    """Intake asks, for one line of a channel order, what the SKU looks like at the order's time."""

    order_key: str  # "<channel>/<external order id>"
    line_no: int
    sku: str
    channel: str
    day: int  # the order's business date, days since the epoch (price validity)


@pickled_by_position
@dataclass(frozen=True, slots=True)
class LineAnswer:
    order_key: str
    line_no: int
    sku: str
    status: str  # item status, "unknown" when not in the item master
    network: int  # the channel's network before intake reservations
    prices: tuple[tuple[str, str], ...]  # (price list id, unit price) valid on the order's date


@pickled_by_position
@dataclass(frozen=True, slots=True)
class NetworkState:
    """A SKU's stock picture before reservations, per channel id (what ``SkuAts`` needs)."""

    sku: str
    status: str
    safety: int
    committed: int
    channels: tuple[tuple[str, int, int, int, int], ...]  # (channel id, on_hand, allocated, in_transit, free)
    positions: tuple[tuple[str, str], ...]  # newest position applied, per system
    known: bool  # anything at all is known of the SKU (stock, item or commitments)


def visible(n: NetworkState) -> bytes:
    """A digest of what channels could see of a SKU's network state (all of it but the positions).

    What ``SkuNetwork`` keeps of the state it sent last: a SKU's state is held for every SKU of the
    catalog, and the digest is a tenth of the size of the state.
    """
    return hashlib.blake2b(repr((n.status, n.safety, n.committed, n.channels, n.known)).encode(),
                           digest_size=16).digest()


@pickled_by_position
@dataclass(slots=True)
class SkuState:
    stock: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)  # loc -> pos, on_hand, alloc, transit
    item: tuple[str, int, str] | None = None  # position, safety stock, status ("deleted" after a delete)
    commitments: dict[str, int] = field(default_factory=dict)  # order line -> qty (nonzero only)
    prices: dict[tuple[str, int], tuple[str, PriceLine | None]] = field(default_factory=dict)
    positions: dict[str, str] = field(default_factory=dict)
    sent: bytes | None = None  # ``visible`` of the NetworkState last sent



class SkuNetwork:
    """Keyed by SKU: stock, item master, prices and commitments -> ``NetworkState``; answers ``LineCheck``."""

    def __init__(self, channels: Sequence[Channel]) -> None:
        self.plans = [(c.id, None if c.locations is None else frozenset(c.locations), c.include_in_transit)
                      for c in channels]
        self.index = {c.id: i for i, c in enumerate(channels)}

    def apply(self, state: SkuState | None, key: str, item: Any, time: int) -> tuple[SkuState | None, list[Any]]:
        if isinstance(item, LineCheck):
            return state, [self._answer(state, item)]
        st = state or SkuState()
        if isinstance(item, Commitment):
            if item.qty:
                st.commitments[item.line] = item.qty
            else:
                st.commitments.pop(item.line, None)
            self._moved(st, item.system, item.position)
            return st, []
        if not isinstance(item, Emit):
            return state, []
        v = item.value
        system, position = source_of(item)
        deleted = v["op"] == "delete"
        if item.topic == INVENTORY_TOPIC:
            location = v["location"]
            if not newer(st.stock.get(location), position):
                return st, []
            if deleted:
                st.stock.pop(location, None)
            else:
                st.stock[location] = (position, v["on_hand"], v["allocated"], v["in_transit"])
        elif item.topic == ITEM_TOPIC:
            if not newer(st.item, position):
                return st, []
            if deleted and st.item is None and not st.stock and not st.commitments:
                return state, []  # the delete of an item never seen changes nothing
            st.item = (position, 0, "deleted") if deleted else (position, v["safety_stock"], v["status"])
        elif item.topic == PRICE_TOPIC:
            row = (v["price_list_id"], v["valid_from"])
            old = st.prices.get(row)
            if old is not None and position <= old[0]:
                return st, []
            st.prices[row] = (position, None if deleted else PriceLine(
                Decimal(v["unit_price"]), v["valid_from"], v["valid_to"]))
        else:
            return st, []
        self._moved(st, system, position)
        return st, []

    @staticmethod
    def _moved(st: SkuState, system: str, position: str) -> None:
        if position > st.positions.get(system, ""):
            st.positions[system] = position

    def _answer(self, st: SkuState | None, check: LineCheck) -> LineAnswer:
        if st is None:
            return LineAnswer(check.order_key, check.line_no, check.sku, "unknown", 0, ())
        status = self._status(st)
        network = 0
        i = self.index.get(check.channel)
        if i is not None:
            free = self._channel(st, *self.plans[i][1:])[3]
            network = free - self._safety(st) - sum(st.commitments.values())
        prices = []
        by_list: dict[str, tuple[int, Decimal]] = {}
        for (price_list, _), (_, line) in st.prices.items():
            if line is not None and line.valid_on(check.day):
                best = by_list.get(price_list)
                if best is None or line.valid_from > best[0]:  # the most specific line for that day
                    by_list[price_list] = (line.valid_from, line.unit_price)
        prices = [(pl, str(price)) for pl, (_, price) in sorted(by_list.items())]
        return LineAnswer(check.order_key, check.line_no, check.sku, status, network, tuple(prices))

    @staticmethod
    def _status(st: SkuState) -> str:
        return "unknown" if st.item is None or st.item[2] == "deleted" else st.item[2]

    def _safety(self, st: SkuState) -> int:
        return st.item[1] if st.item is not None and self._status(st) != "unknown" else 0

    @staticmethod
    def _channel(st: SkuState, locations: frozenset[str] | None, transit: bool) -> tuple[int, int, int, int]:
        """(on hand, allocated, in transit, free) over the channel's locations."""
        on_hand = allocated = in_transit = free = 0
        for location, (_, oh, al, tr) in st.stock.items():
            if locations is None or location in locations:
                on_hand, allocated, in_transit = on_hand + oh, allocated + al, in_transit + tr
                free += (oh - al if oh > al else 0) + (tr if transit else 0)
        return on_hand, allocated, in_transit, free

    def state_of(self, st: SkuState, sku: str) -> NetworkState:
        channels = []
        for channel_id, locations, transit in self.plans:
            on_hand, allocated, in_transit, free = self._channel(st, locations, transit)
            channels.append((channel_id, on_hand, allocated, in_transit, free))
        known = bool(st.stock or st.commitments or (st.item is not None and st.item[2] != "deleted"))
        return NetworkState(sku, self._status(st), self._safety(st), sum(st.commitments.values()), tuple(channels),
                            tuple(sorted(st.positions.items())), known)

    def close(self, state: SkuState | None, key: str, time: int) -> tuple[SkuState | None, list[Any]]:
        if state is None:
            return None, []
        now = self.state_of(state, key)
        seen = visible(now)
        if seen == state.sent:
            return state, []  # positions moved only: nothing a channel could see
        state.sent = seen
        return state, [now]



# ----------------------------------------------------------------------------- per-SKU availability


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Reservation:
    """What an accepted, not yet imported channel order line reserves of `sku` (0: released)."""

    sku: str
    line: str  # "<channel>/<external order id>/<line no>"
    qty: int


@pickled_by_position
@dataclass(slots=True)
class View:
    """What one channel was last told about a SKU, and what is held for it."""

    ats: int = -1  # -1: never published
    status: str = ""
    published_ms: int = -(2**62)
    held: bool = False
    oversold: bool = False


@pickled_by_position
@dataclass(slots=True)
class AtsState:
    net: NetworkState | None = None
    reservations: dict[str, int] = field(default_factory=dict)
    views: dict[str, View] = field(default_factory=dict)  # by channel id
    unknown_armed: bool = False
    unknown_since: int = 0
    commerce: str = ""  # newest reservation change (its order line), for the record's positions
    version: int = 0  # inputs applied: orders publications of one SKU, the same in every run



class SkuAts:
    """Keyed by SKU: ``NetworkState`` and ``Reservation`` changes -> ``Availability`` per channel, exceptions."""

    def __init__(self, channels: Sequence[Channel], unknown_sku_ms: int = 60_000) -> None:
        self.channels = {c.id: c for c in channels}
        self.shares = {c.id: (c.share_exact.numerator, c.share_exact.denominator) for c in channels}
        self.unknown_sku_ms = unknown_sku_ms

    def wake_after(self) -> int:
        """How long after an input this step wants to look again (its longest publish interval)."""
        return max((c.min_publish_interval_ms for c in self.channels.values()), default=0)

    def apply(self, state: AtsState | None, key: str, item: Any, time: int) -> tuple[AtsState | None, list[Any]]:
        if isinstance(item, Wake):
            return state, []
        st = state or AtsState()
        if isinstance(item, NetworkState):
            st.net = item
        elif isinstance(item, Reservation):
            if item.qty:
                st.reservations[item.line] = item.qty
            else:
                st.reservations.pop(item.line, None)
            st.commerce = max(st.commerce, item.line)
        else:
            return st, []
        st.version += 1
        return st, []

    def numbers(self, st: AtsState, channel: Channel) -> dict[str, Any]:
        """The channel's ATS and its explanation, straight from the spec's formula."""
        net = st.net
        reserved = sum(st.reservations.values())
        if net is None:
            on_hand = allocated = in_transit = free = safety = committed = 0
            status = "unknown"
        else:
            row = next((r for r in net.channels if r[0] == channel.id), (channel.id, 0, 0, 0, 0))
            _, on_hand, allocated, in_transit, free = row
            safety, committed, status = net.safety, net.committed, net.status
        network = free - safety - committed - reserved
        numerator, denominator = self.shares[channel.id]
        ats = max(0, network * numerator // denominator) if status == "active" else 0
        return {"ats": ats, "on_hand": on_hand, "allocated": allocated, "in_transit": in_transit,
                "committed_open": committed, "intake_reserved": reserved, "safety_stock": safety,
                "network": network, "status": status}

    def close(self, state: AtsState | None, key: str, time: int) -> tuple[AtsState | None, list[Any]]:
        if state is None:
            return None, []
        st = state
        out: list[Any] = self._unknown_sku(st, key, time)
        known = bool(st.reservations) or (st.net is not None and st.net.known)
        for channel in self.channels.values():
            view = st.views.get(channel.id)
            numbers = self.numbers(st, channel)
            if view is None:
                if not known:
                    continue  # a SKU nobody ever had: nothing to tell a channel
                view = st.views[channel.id] = View()
            out.extend(self._oversold(view, key, channel, numbers, time))
            if (numbers["ats"], numbers["status"]) == (view.ats, view.status):
                view.held = False
                continue
            if time < view.published_ms + channel.min_publish_interval_ms:
                view.held = True  # a wake at the interval's end publishes it
                continue
            view.ats, view.status, view.published_ms, view.held = numbers["ats"], numbers["status"], time, False
            out.append(self._record(st, key, channel, numbers, time))
        return st, out

    def republish(self, state: AtsState | None, key: str, stores: frozenset[str]) -> list[Any]:
        """What the stores should hold for this SKU now, for a store that lost its data.

        Its availability for every channel told so far (Redis and the ops database) and its open
        oversold exceptions (ops database).
        """
        if state is None:
            return []
        out: list[Any] = []
        for channel in self.channels.values():
            view = state.views.get(channel.id)
            if view is None or view.ats < 0:
                continue
            record = self._record(state, key, channel, self.numbers(state, channel), view.published_ms)
            out.append(Reseed(stores & {"redis", "ops-db"}, record))
            if view.oversold and "ops-db" in stores:
                numbers = self.numbers(state, channel)
                detail = {k: numbers[k] for k in sorted(numbers)}
                out.append(Reseed(frozenset({"ops-db"}), exception(
                    "oversold", "error", "availability", f"{channel.id}/{key}",
                    f"network availability {numbers['network']} is below zero", detail, view.published_ms)))
        return out

    def _record(self, st: AtsState, sku: str, channel: Channel, numbers: dict[str, Any], time: int) -> Emit:
        positions = dict(st.net.positions) if st.net is not None else {}
        if st.commerce:
            positions["commerce"] = st.commerce
        return Emit(channel.topic, sku, AVAILABILITY_SCHEMA, {
            **numbers, "channel": channel.id, "sku": sku, "positions": positions, "version": st.version,
            "event_time_ms": time, "published_at_ms": time})

    def _oversold(self, view: View, sku: str, channel: Channel, numbers: dict[str, Any], time: int) -> list[Emit]:
        # Sold more than there is: negative because of open orders or reservations (whatever the item's
        # status), not because safety stock alone exceeds the stock (an empty shelf, not an oversell).
        promised = int(numbers["committed_open"]) + int(numbers["intake_reserved"])
        oversold = int(numbers["network"]) < 0 and promised > 0
        if oversold == view.oversold:
            return []
        view.oversold = oversold
        detail = {k: numbers[k] for k in sorted(numbers)}
        if oversold:
            return [exception("oversold", "error", "availability", f"{channel.id}/{sku}",
                              f"network availability {numbers['network']} is below zero", detail, time)]
        return [exception("oversold", "error", "availability", f"{channel.id}/{sku}",
                          f"resolved: network availability is {numbers['network']}", detail, time, state="resolved")]

    def _unknown_sku(self, st: AtsState, sku: str, time: int) -> list[Any]:
        """Arm the `unknown_sku` timer while stock, orders or reservations exist for a SKU not in the item master.

        It fires only if the item master still lacks the SKU after `unknown_sku_ms` of event time:
        stock and items come through different tables, and a new item's stock often arrives first.
        """
        net = st.net
        unknown = (net is None or net.status == "unknown") and (
            bool(st.reservations) or (net is not None and net.known))
        if unknown == st.unknown_armed:
            return []
        reason = "stock or orders exist for a SKU that is not in the item master"
        if unknown:
            st.unknown_armed, st.unknown_since = True, time
            return arm(Deadline("unknown_sku", sku, time + self.unknown_sku_ms, time, True, reason, entity="item"))
        st.unknown_armed = False
        due = st.unknown_since + self.unknown_sku_ms
        out: list[Any] = [Deadline("unknown_sku", sku, due, time, False, entity="item")]
        if time >= due:  # it fired: the item master has it now
            out.extend(overdue("unknown_sku", "item", sku, reason, due, time, {}, armed_ms=st.unknown_since))
        return out

