"""HTTP push to commerce platforms (spec section 12): governed delivery of availability and order status.

A channel file may declare ``[outputs.push]`` (state.channels.Push). The dataflow's sink
(``PushSink``) never waits on HTTP: it hands each Availability / OrderStatus record to the
channel's ``Delivery`` and returns. Each Delivery runs on one asyncio loop in a daemon thread
(``Engine``), so a slow or dead platform holds only its own tasks:

- **Owed values, coalesced.** ``pending`` maps each key (SKU or external order id) to the newest
  value owed; a value is taken only if its fence (the ERP and WMS positions and the version, the
  same fence as Redis and the ops database) is newer than what is pending, in flight, acknowledged
  or rejected for that key. The map is bounded by the keys touched, not by the change rate.
- **Never out of order per key.** A key is in at most one request at a time; a newer value waits
  for that request's outcome and a retry always carries the newest value. Each request's
  ``Idempotency-Key`` is a digest of the keys and fences it carries, so a retry of the same values
  is the same request to the platform.
- **Governed.** Requests are rate limited (aiolimiter: the platform's rate, one request of burst
  kept in reserve for network jitter), retried on timeouts, connection errors, 5xx and 429
  (tenacity: exponential backoff with jitter; 429 waits ``Retry-After`` or BigCommerce's
  ``X-Rate-Limit-Time-Reset-Ms``, and pauses the whole channel), and guarded by a circuit breaker
  per channel (``Breaker``). A 4xx other than 408/429 is permanent: a batch is split in halves
  until the rejected values are alone, and each becomes a ``channel_rejected`` exception with the
  request and the response; it is sent again only after ``erpsync channels replay``.
- **Durable.** What the platform acknowledged (and rejected) per key is persisted in
  ``sync.channel_deliveries`` before the key is released. On start, and every
  ``ERPSYNC_PUSH__RESCAN_S``, what is owed is re-derived from the latest values in
  ``sync.availability`` / ``sync.order_status`` against those fences, so values handed over
  before a crash are never lost and nothing older is re-sent over a newer value.
- **Visible.** ``sync.channel_status`` (``erpsync channels status``) and OpenTelemetry metrics:
  ``erpsync.channel.requests`` (by outcome), ``erpsync.channel.delivered``,
  ``erpsync.channel.latency`` (handed over -> acknowledged, ms), ``erpsync.sync.latency`` with sink
  ``push`` (source commit -> acknowledged), gauges ``erpsync.channel.pending``
  and ``erpsync.channel.breaker`` (0 closed, 1 half-open, 2 open).

Credentials come from the environment variables the channel file names; they are never logged,
stored or put in an exception (request headers are recorded without them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, NoReturn

import httpx2
import psycopg
from aiolimiter import AsyncLimiter
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Producer
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from connectors import ops_db
from erpsync import telemetry
from erpsync.settings import Settings
from state import exception
from state.availability import AVAILABILITY_SCHEMA
from state.channels import Channel, Push, PushAuth
from state.order_status import ORDER_STATUS_SCHEMA
from state.records import EXCEPTIONS_TOPIC, Emit

log = logging.getLogger(__name__)
# httpx2 logs every request at INFO: at tens of requests per second that drowns the pipeline's log.
logging.getLogger("httpx2").setLevel(logging.WARNING)

Kind = Literal["availability", "order_status"]
Key = tuple[str, str]  # (kind, sku or external order id)
Fence = tuple[str, str, int]  # (ERP position, WMS position, version); order status: ("", "", version)
Serializer = Callable[[str, str, dict[str, Any]], bytes]

KIND_OF_SCHEMA: dict[str, Kind] = {AVAILABILITY_SCHEMA: "availability", ORDER_STATUS_SCHEMA: "order_status"}
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
RATE_HEADROOM = 0.98  # of the platform's rate: refills the platform's bucket after jitter used the reserve
BODY_LIMIT = 16_000  # characters of a request or response body kept in an exception
ORDER_STATUS_SHOWN = ("status", "order_id", "carriers", "tracking_numbers", "version")  # kept when acknowledged

_meter = metrics.get_meter("erpsync")
REQUESTS = _meter.create_counter("erpsync.channel.requests", description="push requests by channel and outcome")
DELIVERED = _meter.create_counter("erpsync.channel.delivered", description="values acknowledged, by channel and kind")
LATENCY = _meter.create_histogram("erpsync.channel.latency", unit="ms",
                                  description="value handed to the channel's delivery -> acknowledged, per channel")


# ----------------------------------------------------------------------------- values and fences


def fence_of(kind: Kind, value: dict[str, Any]) -> Fence:
    """The stores' fence (connectors.redis, connectors.ops_db): the value's version, which only grows.

    Versions count the inputs a key's state applied in event-time order: the same in every run, so
    a redelivered or re-read value never passes a newer one. (The first two fields are kept empty.)
    """
    return "", "", int(value.get("version", 0))


def newer(new: Fence, old: Fence | None) -> bool:
    return old is None or new[2] > old[2]


@dataclass(frozen=True, slots=True)
class Item:
    """One owed value: what is sent for one key."""

    kind: Kind
    key: str
    body: dict[str, Any]  # the webhook item (format-independent; formats pick fields from it)
    fence: Fence
    event_ms: int  # source event time it reflects (sync latency)
    owed_at: float  # monotonic time it was handed over (delivery latency)

    @property
    def ref(self) -> Key:
        return self.kind, self.key


def item_of(kind: Kind, value: dict[str, Any]) -> Item:
    """The item owed for an Availability or OrderStatus record (dicts shaped by the Avro schemas)."""
    if kind == "availability":
        body = {f: value[f] for f in ("sku", "ats", "status", "positions", "version", "event_time_ms")}
        return Item(kind, value["sku"], body, fence_of(kind, value), int(value["event_time_ms"]), time.monotonic())
    body = {f: value[f] for f in ("external_order_id", "order_id", "status", "reasons", "lines", "carriers",
                                  "tracking_numbers", "last_fact_ms", "version")}
    return Item(kind, value["external_order_id"], body, fence_of(kind, value), int(value["last_fact_ms"]),
                time.monotonic())


def idempotency_key(channel: str, items: Sequence[Item]) -> str:
    """A digest of the keys and fences sent: the same values are the same request, whatever the attempt."""
    text = "\n".join(f"{i.kind}|{i.key}|{'|'.join(map(str, i.fence))}" for i in sorted(items, key=lambda i: i.ref))
    return hashlib.blake2b(f"{channel}\n{text}".encode(), digest_size=16).hexdigest()


# ----------------------------------------------------------------------------- requests


def auth_headers(channel: str, auth: PushAuth, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Headers carrying the credentials, read from the named environment variables (fails naming the variable)."""
    env = os.environ if environ is None else environ

    def read(name: str | None) -> str:
        value = env.get(name or "")
        if not value:
            raise ValueError(f"channel {channel}: push credentials: environment variable {name} is not set")
        return value

    if auth.type == "bearer":
        return {"Authorization": f"Bearer {read(auth.token_env)}"}
    if auth.type == "header":
        return {auth.header: read(auth.token_env)}
    if auth.type == "basic":
        pair = f"{read(auth.user_env)}:{read(auth.password_env)}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {}


def request_of(channel: str, push: Push, items: Sequence[Item], idem: str) -> tuple[str, dict[str, Any]]:
    """(HTTP method, JSON body) in the channel's format."""
    if push.format == "bigcommerce":
        # BigCommerce Inventory API, absolute adjustments: the quantity becomes the ATS at the location.
        return "PUT", {"reason": "erpsync available-to-sell", "items": [
            {"location_id": push.location_id, "sku": i.key, "quantity": i.body["ats"]} for i in items]}
    body: dict[str, Any] = {"channel": channel, "idempotency_key": idem}
    for kind in push.sends:
        body[kind] = [i.body for i in items if i.kind == kind]
    return "POST", body


class Transient(Exception):  # noqa: N818 - an outcome, not an error of ours
    """A failure worth retrying: timeout, connection error, 5xx, 429."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind, self.retry_after = kind, retry_after


def retry_after_s(headers: httpx2.Headers, now: float | None = None) -> float | None:
    """Seconds the platform asks to wait: BigCommerce's reset (milliseconds), else Retry-After (seconds or a date).

    Retry-After is whole seconds in practice; the platform's own millisecond reset, when it sends one,
    says the same more precisely (a second lost per 429 would cost a 50 requests/s channel dearly).
    """
    reset = headers.get("x-rate-limit-time-reset-ms")
    if reset:
        with contextlib.suppress(ValueError):
            return max(0.0, float(reset) / 1000)
    raw = headers.get("retry-after")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError):
                return max(0.0, parsedate_to_datetime(raw).timestamp() - (now or time.time()))
    return None


def _clip(text: str) -> str:
    return text if len(text) <= BODY_LIMIT else text[:BODY_LIMIT] + f"... ({len(text)} characters)"


# ----------------------------------------------------------------------------- circuit breaker


class Breaker:
    """closed -> open after `failures` consecutive failures -> half-open after `reset_s`: one probe request.

    A small state machine rather than a library: the transitions must be observed exactly once (they
    raise and resolve ``channel_unavailable``), the probe is a real delivery, and it runs on asyncio;
    the maintained breakers (pybreaker, circuitbreaker) wrap synchronous calls or decorate functions.
    """

    def __init__(self, failures: int, reset_s: float, on_change: Callable[[str, str, str], None]) -> None:
        self.threshold, self.reset_s, self.on_change = failures, reset_s, on_change
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False
        self.changed = asyncio.Event()

    async def admit(self) -> None:
        """Wait until a request may go: always when closed; one probe when half-open."""
        while True:
            if self.state == "closed":
                return
            if self.state == "open":
                wait = self.opened_at + self.reset_s - time.monotonic()
                if wait <= 0:
                    self._move("half_open", "probe")
                    continue
                await self._wait(wait)
                continue
            if not self.probing:
                self.probing = True
                return
            await self._wait(self.reset_s)

    async def _wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)

    def skip_probe(self) -> None:
        """An admitted request was not sent after all: another may probe."""
        self.probing = False

    def success(self) -> None:
        self.failures = 0
        self.probing = False
        if self.state != "closed":
            self._move("closed", "a request succeeded")

    def failure(self, error: str) -> None:
        self.failures += 1
        self.probing = False
        if self.state == "half_open" or (self.state == "closed" and self.failures >= self.threshold):
            self.opened_at = time.monotonic()
            self._move("open", error)

    def _move(self, state: str, why: str) -> None:
        before, self.state = self.state, state
        self.changed.set()  # wakes every waiter; later waiters wait for the next change
        self.changed = asyncio.Event()
        self.on_change(before, state, why)


# ----------------------------------------------------------------------------- persistence

_ACK = """
INSERT INTO sync.channel_deliveries AS d (channel, kind, key, acked_pos_erp, acked_pos_wms, acked_version,
    acked_value, acked_ats, acked_idempotency_key, acked_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (channel, kind, key) DO UPDATE SET
    acked_pos_erp = excluded.acked_pos_erp, acked_pos_wms = excluded.acked_pos_wms,
    acked_version = excluded.acked_version, acked_value = excluded.acked_value, acked_ats = excluded.acked_ats,
    acked_idempotency_key = excluded.acked_idempotency_key, acked_at = now(),
    -- a newer value accepted clears an older rejection
    rejected_pos_erp = NULL, rejected_pos_wms = NULL, rejected_version = NULL, rejected_exception = NULL,
    rejected_at = NULL
WHERE d.acked_version IS NULL OR d.acked_version < excluded.acked_version
"""
_REJECT = """
INSERT INTO sync.channel_deliveries AS d (channel, kind, key, rejected_pos_erp, rejected_pos_wms, rejected_version,
    rejected_exception, rejected_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (channel, kind, key) DO UPDATE SET
    rejected_pos_erp = excluded.rejected_pos_erp, rejected_pos_wms = excluded.rejected_pos_wms,
    rejected_version = excluded.rejected_version, rejected_exception = excluded.rejected_exception, rejected_at = now()
"""
_DONE = """
SELECT kind, key, acked_pos_erp, acked_pos_wms, acked_version, rejected_pos_erp, rejected_pos_wms, rejected_version
FROM sync.channel_deliveries WHERE channel = %s
"""
# "x newer than the fence f" in SQL (see newer(): the version); a NULL fence is older than anything.
_NEWER = "({f}_version IS NULL OR {x}version > {f}_version)"
_OWED_AVAILABILITY = f"""
SELECT a.*, d.rejected_version IS NULL AS not_rejected
FROM sync.availability a
LEFT JOIN sync.channel_deliveries d ON d.channel = a.channel AND d.kind = 'availability' AND d.key = a.sku
WHERE a.channel = %s AND {_NEWER.format(f="d.acked", x="a.")} AND {_NEWER.format(f="d.rejected", x="a.")}
"""
_OWED_ORDER_STATUS = """
SELECT o.*, d.rejected_version IS NULL AS not_rejected
FROM sync.order_status o
LEFT JOIN sync.channel_deliveries d ON d.channel = o.channel AND d.kind = 'order_status' AND d.key = o.external_order_id
WHERE o.channel = %s AND (d.acked_version IS NULL OR o.version > d.acked_version)
  AND (d.rejected_version IS NULL OR o.version > d.rejected_version)
"""
_STATUS = """
INSERT INTO sync.channel_status (channel, breaker, pending, in_flight, delivered, last_position, latency_p50_ms,
    latency_p99_ms, requests_per_s, errors, started_at, updated_at)
VALUES (%(channel)s, %(breaker)s, %(pending)s, %(in_flight)s, %(delivered)s, %(last_position)s, %(latency_p50_ms)s,
    %(latency_p99_ms)s, %(requests_per_s)s, %(errors)s, %(started_at)s, now())
ON CONFLICT (channel) DO UPDATE SET breaker = excluded.breaker, pending = excluded.pending,
    in_flight = excluded.in_flight, delivered = excluded.delivered, last_position = excluded.last_position,
    latency_p50_ms = excluded.latency_p50_ms, latency_p99_ms = excluded.latency_p99_ms,
    requests_per_s = excluded.requests_per_s, errors = excluded.errors, started_at = excluded.started_at,
    updated_at = now()
"""


def availability_value(row: dict[str, Any]) -> dict[str, Any]:
    """An Availability value from its sync.availability row (connectors.ops_db.availability_row reversed)."""
    positions = {system: row[f"pos_{system}"] for system in ("erp", "wms", "commerce", "clock") if row[f"pos_{system}"]}
    return {**{k: v for k, v in row.items() if not k.startswith("pos_")}, "positions": positions}


class Store:
    """The channel's rows in the ops database, on one async connection (reconnected after a failure)."""

    def __init__(self, settings: Settings, channel: str) -> None:
        self.settings, self.channel = settings, channel
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.lock = asyncio.Lock()

    async def run(self, fn: Callable[[psycopg.AsyncConnection[Any]], Any]) -> Any:
        """fn(connection) in a transaction, retried until the database answers (acks must be persisted)."""
        delay = 0.5
        async with self.lock:
            while True:
                try:
                    if self.conn is None or self.conn.closed:
                        db = self.settings.ops
                        self.conn = await psycopg.AsyncConnection.connect(
                            host=db.host, port=db.port, dbname=db.dbname, user=db.user,
                            password=db.password.get_secret_value(), connect_timeout=10)
                    async with self.conn.transaction():
                        return await fn(self.conn)
                except psycopg.OperationalError as exc:
                    log.warning("channel %s: ops database unavailable (%s); retrying in %.1fs", self.channel,
                                str(exc).splitlines()[0] if str(exc) else type(exc).__name__, delay)
                    if self.conn is not None:
                        await self.conn.close()
                    self.conn = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10)

    async def done(self) -> tuple[dict[Key, Fence], dict[Key, Fence]]:
        async def q(conn: psycopg.AsyncConnection[Any]) -> tuple[dict[Key, Fence], dict[Key, Fence]]:
            acked: dict[Key, Fence] = {}
            rejected: dict[Key, Fence] = {}
            cur = await conn.execute(_DONE, (self.channel,))
            for kind, key, ae, aw, av, re_, rw, rv in await cur.fetchall():
                if av is not None:
                    acked[(kind, key)] = (ae or "", aw or "", int(av))
                if rv is not None:
                    rejected[(kind, key)] = (re_ or "", rw or "", int(rv))
            return acked, rejected
        result: tuple[dict[Key, Fence], dict[Key, Fence]] = await self.run(q)
        return result

    async def owed(self, sends: Sequence[Kind]) -> list[tuple[Item, bool]]:
        """(item, no rejection outstanding) for every latest value newer than what the channel acknowledged."""
        async def q(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Item, bool]]:
            out: list[tuple[Item, bool]] = []
            cur = conn.cursor(row_factory=dict_row)
            if "availability" in sends:
                for row in await (await cur.execute(_OWED_AVAILABILITY, (self.channel,))).fetchall():
                    clear = row.pop("not_rejected")
                    out.append((item_of("availability", availability_value(row)), clear))
            if "order_status" in sends:
                for row in await (await cur.execute(_OWED_ORDER_STATUS, (self.channel,))).fetchall():
                    clear = row.pop("not_rejected")
                    out.append((item_of("order_status", row), clear))
            return out
        result: list[tuple[Item, bool]] = await self.run(q)
        return result

    async def ack(self, requests: Sequence[tuple[Sequence[Item], str]]) -> None:
        """Persist what the platform accepted: (items, idempotency key) of one or more requests, one transaction."""
        # availability: the ATS is what the platform holds (reconcile); order status: what it shows
        rows = [(self.channel, i.kind, i.key, i.fence[0], i.fence[1], i.fence[2],
                 None if i.kind == "availability" else Jsonb({f: i.body[f] for f in ORDER_STATUS_SHOWN}),
                 i.body.get("ats"), idem) for items, idem in requests for i in items]

        async def q(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.cursor() as cur:
                await cur.executemany(_ACK, rows)
        await self.run(q)

    async def reject(self, item: Item, exception_id: str) -> None:
        async def q(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(_REJECT, (self.channel, item.kind, item.key, *item.fence, exception_id))
        await self.run(q)

    async def status(self, row: dict[str, Any]) -> None:
        async def q(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(_STATUS, row)
        await self.run(q)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


class ExceptionWriter:
    """channel_rejected / channel_unavailable the pipeline's way: the ops database upsert and sync.exceptions."""

    def __init__(self, settings: Settings, serialize: Serializer | None) -> None:
        self.settings, self.serialize = settings, serialize
        self.lock = threading.Lock()
        self.producer: Producer | None = None

    def write(self, emits: Sequence[Emit]) -> None:
        with self.lock:
            with ops_db.connect(self.settings) as conn:
                with conn.cursor() as cur:
                    cur.executemany(ops_db.UPSERT_EXCEPTION, [ops_db.exception_row(e.value) for e in emits])
                conn.commit()
            if self.serialize is None:
                return
            if self.producer is None:
                self.producer = Producer(self.settings.kafka.client_config() | {"enable.idempotence": True})
            for e in emits:
                self.producer.produce(EXCEPTIONS_TOPIC, key=e.key.encode(),
                                      value=self.serialize(e.topic, e.schema, e.value))
            left = self.producer.flush(10)
            if left:
                log.warning("%d channel exception record(s) not yet delivered to %s", left, EXCEPTIONS_TOPIC)


# ----------------------------------------------------------------------------- delivery


class Stats:
    """Figures for status and metrics; touched from the loop thread only."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.latencies: deque[tuple[float, float]] = deque(maxlen=20_000)  # (monotonic, ms)
        self.requests: deque[float] = deque(maxlen=10_000)  # monotonic times of responses
        self.errors: Counter[str] = Counter()
        self.delivered = 0
        self.last_position: dict[str, Any] | None = None

    def percentiles(self, window_s: float = 60.0) -> tuple[float | None, float | None]:
        since = time.monotonic() - window_s
        values = sorted(ms for t, ms in self.latencies if t >= since)
        if not values:
            return None, None
        return values[len(values) // 2], values[min(len(values) - 1, int(len(values) * 0.99))]

    def rate(self, window_s: float = 10.0) -> float:
        since = time.monotonic() - window_s
        return sum(1 for t in self.requests if t >= since) / window_s


class Delivery:
    """Everything one channel is owed, and the tasks that deliver it (see the module doc)."""

    def __init__(self, settings: Settings, channel: Channel, exceptions: ExceptionWriter,
                 environ: dict[str, str] | None = None) -> None:
        assert channel.outputs.push is not None
        self.settings, self.channel, self.push = settings, channel.id, channel.outputs.push
        self.headers = {"Content-Type": "application/json", "User-Agent": "erpsync",
                        **auth_headers(channel.id, self.push.auth, environ)}
        self.exceptions = exceptions
        self.lock = threading.Lock()
        self.pending: dict[Key, Item] = {}
        self.inflight: dict[Key, Item] = {}
        self.acked: dict[Key, Fence] = {}
        self.rejected: dict[Key, Fence] = {}
        self.rejected_at: dict[Key, float] = {}  # monotonic time of a rejection made by this process
        self.unauthorized = False  # a 401/403 is outstanding (one channel-level exception)
        self.stats = Stats()
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.paused_until = 0.0
        self.down_since: float | None = None
        self.last_error = ""

    # -- the dataflow's side (any thread)

    def offer(self, items: Iterable[Item]) -> int:
        """Take the values newer than what this channel holds for their keys; returns how many were taken."""
        taken = 0
        with self.lock:
            for item in items:
                taken += self._take_locked(item)
        if taken and self.loop is not None:
            self.loop.call_soon_threadsafe(self._wake_all)
        return taken

    def _take_locked(self, item: Item) -> int:
        ref = item.ref
        current = self.pending.get(ref) or self.inflight.get(ref)
        if current is not None:
            if not newer(item.fence, current.fence):
                return 0
        elif not newer(item.fence, self.acked.get(ref)) or not newer(item.fence, self.rejected.get(ref)):
            return 0
        self.pending[ref] = item  # an update keeps the key's place in line
        return 1

    def counts(self) -> tuple[int, int]:
        """(values waiting, values in flight); a key can have one of each (a newer value waits for the request)."""
        with self.lock:
            return len(self.pending), len(self.inflight)

    def owed_keys(self) -> int:
        with self.lock:
            return len(self.pending) + sum(1 for ref in self.inflight if ref not in self.pending)

    # -- the loop's side

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        self.breaker = Breaker(self.push.breaker_failures, self.push.breaker_reset_s, self._breaker_moved)
        # A fifth of the burst (one request at least) is kept in reserve, and the rate is a little
        # under the platform's, so that jitter between here and the platform's clock (a request
        # delayed, the next one not) never makes requests arrive closer together than it allows.
        capacity = max(1, self.push.burst - max(1, self.push.burst // 5))
        self.limiter = AsyncLimiter(capacity, capacity / (self.push.rate_per_s * RATE_HEADROOM))
        self.backoff = wait_exponential_jitter(multiplier=0.25, max=self.push.backoff_max_s, jitter=0.5)
        self.store = Store(self.settings, self.channel)
        self.acks: list[tuple[Sequence[Item], str, float]] = []  # accepted, not yet persisted
        self.acks_waiting = asyncio.Event()
        limits = httpx2.Limits(max_connections=self.push.concurrency, max_keepalive_connections=self.push.concurrency)
        self.client = httpx2.AsyncClient(timeout=self.push.timeout_s, limits=limits, trust_env=False)
        try:
            self.acked, self.rejected = await self.store.done()
            await self.rescan()
            self.ready.set()
            log.info("channel %s: pushing %s to %s (%s format, %.1f requests/s, batches of %d); %d keys owed",
                     self.channel, " and ".join(self.push.sends), self.push.url, self.push.format,
                     self.push.rate_per_s, self.push.batch_size, len(self.pending))
            async with asyncio.TaskGroup() as tasks:
                for n in range(self.push.concurrency):
                    tasks.create_task(self._sender(), name=f"push-{self.channel}-{n}")
                tasks.create_task(self._ack_writer())
                tasks.create_task(self._every(self.settings.push.rescan_s, self.rescan))
                tasks.create_task(self._every(self.settings.push.status_interval_s, self.write_status))
        finally:
            await self.client.aclose()
            await self.store.close()

    def _wake_all(self) -> None:
        self.wake.set()

    async def _every(self, interval_s: float, fn: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await fn()
            except Exception as exc:  # noqa: BLE001 - a periodic chore must not end delivery
                log.warning("channel %s: %s failed: %s", self.channel, getattr(fn, "__name__", "task"), exc)

    async def rescan(self) -> None:
        """Offer every latest value newer than what was acknowledged (and not rejected as it is)."""
        started = time.monotonic()
        owed = await self.store.owed(self.push.sends)
        with self.lock:
            for item, clear in owed:
                # a replayed rejection: the key may be sent again (unless it was rejected after the query)
                if clear and self.rejected_at.get(item.ref, 0.0) < started:
                    self.rejected.pop(item.ref, None)
        self.offer(item for item, _ in owed)

    def _take(self) -> list[Key]:
        with self.lock:
            refs = []
            for ref in self.pending:
                if ref not in self.inflight:
                    refs.append(ref)
                    if len(refs) == self.push.batch_size:
                        break
            for ref in refs:
                self.inflight[ref] = self.pending.pop(ref)
        return refs

    def _has_work(self) -> bool:
        with self.lock:
            return any(ref not in self.inflight for ref in self.pending)

    async def _sender(self) -> None:
        while True:
            if not self._has_work():
                self.wake.clear()
                if not self._has_work():
                    await self.wake.wait()
                    continue
            await self._gate()  # the batch is taken once the request may go: it fills up meanwhile
            refs = self._take()
            if not refs:  # another sender took the work
                self.breaker.skip_probe()
                continue
            try:
                await self._deliver(refs, gated=True)
            except Exception:
                # Not a platform outcome (a bug, or the ops database gone for good): give the keys back.
                log.exception("channel %s: delivery of %d keys failed", self.channel, len(refs))
                self._release(refs)
                await asyncio.sleep(1)
            self.wake.set()  # keys that waited for this request may go now

    def _release(self, refs: Sequence[Key]) -> None:
        with self.lock:
            for ref in refs:
                item = self.inflight.pop(ref, None)
                if item is not None and ref not in self.pending:
                    self.pending[ref] = item

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return exc.retry_after + random.uniform(0, 0.05)  # noqa: S311 - jitter, not a secret
        return float(self.backoff(state))

    async def _deliver(self, refs: list[Key], *, gated: bool = False) -> None:
        async for attempt in AsyncRetrying(retry=retry_if_exception_type(Transient), wait=self._wait, reraise=True):
            with attempt:
                if not gated:
                    await self._gate()
                gated = False
                await self._attempt(refs)

    async def _gate(self) -> None:
        """Wait until a request may go: the breaker admits it, no throttle pause, the rate limit has room."""
        await self.breaker.admit()
        while (pause := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(pause)
        await self.limiter.acquire()

    def _newest(self, refs: Sequence[Key]) -> list[Item]:
        """The values to send now: a newer value that arrived during a backoff replaces the one in flight."""
        with self.lock:
            for ref in refs:
                if ref in self.pending:
                    self.inflight[ref] = self.pending.pop(ref)
            return [self.inflight[ref] for ref in refs]

    async def _attempt(self, refs: list[Key]) -> None:
        items = self._newest(refs)
        idem = idempotency_key(self.channel, items)
        method, body = request_of(self.channel, self.push, items, idem)
        content = json.dumps(body, separators=(",", ":")).encode()
        self.stats.requests.append(time.monotonic())
        try:
            response = await self.client.request(method, self.push.url, content=content,
                                                  headers={**self.headers, "Idempotency-Key": idem})
        except httpx2.TimeoutException as exc:
            self._failed("timeout", f"no response within {self.push.timeout_s:g}s ({type(exc).__name__})")
        except httpx2.TransportError as exc:
            self._failed("connect", f"{type(exc).__name__}: {exc}")
        status = response.status_code
        left = response.headers.get("x-rate-limit-requests-left")
        if left is not None and left.strip() == "0":  # BigCommerce: the window is used up
            self._pause(retry_after_s(response.headers))
        if 200 <= status < 300:
            self.breaker.success()
            if self.unauthorized:
                self._unauthorized(None, "")
            self._accepted(items, idem)
            REQUESTS.add(1, {"channel": self.channel, "outcome": "ok"})
            return
        if status == 429:
            self.breaker.success()  # throttled, but there
            wait = retry_after_s(response.headers)
            self._pause(wait)
            self._count("throttled")
            raise Transient("throttled", f"HTTP 429, retry after {wait}", wait if wait is not None else 1.0)
        if status >= 500 or status == 408:
            self._failed(f"http_{status // 100}xx" if status >= 500 else "timeout", f"HTTP {status}")
        self.breaker.success()
        if status in (401, 403):  # the credentials, not the values: nothing is marked rejected
            self._count("unauthorized")
            self._unauthorized(response, method)
            self._pause(self.push.breaker_reset_s)
            raise Transient("unauthorized", f"HTTP {status}", self.push.breaker_reset_s)
        self._count("rejected")
        if len(items) > 1:  # find the values the platform refuses: halves until they are alone
            half = len(refs) // 2
            await self._deliver(refs[:half])
            await self._deliver(refs[half:])
            return
        await self._rejected(items[0], method, body, idem, response)

    def _unauthorized(self, response: httpx2.Response | None, method: str) -> None:
        """Raise (response given) or resolve (None) the channel's channel_rejected exception for its credentials."""
        if (response is not None) == self.unauthorized:
            return
        self.unauthorized = response is not None
        now_ms = int(time.time() * 1000)
        if response is not None:
            reason = (f"{self.channel} refused the credentials: HTTP {response.status_code} "
                      f"{' '.join(response.text.split())[:200]}; values stay owed, retried every "
                      f"{self.push.breaker_reset_s:g}s")
            detail = {"channel": self.channel, "auth": self.push.auth.type,
                      "credentials_from": [n for n in (self.push.auth.token_env, self.push.auth.user_env,
                                                       self.push.auth.password_env) if n],
                      "request": {"method": method, "url": self.push.url},
                      "response": {"status": response.status_code, "headers": dict(response.headers),
                                   "body": _clip(response.text)}}
            emit = exception("channel_rejected", "critical", "channel", f"{self.channel}/credentials", reason, detail,
                             now_ms)
        else:
            emit = exception("channel_rejected", "critical", "channel", f"{self.channel}/credentials",
                             f"{self.channel} accepts the credentials again", {"channel": self.channel}, now_ms,
                             state="resolved")
        log.warning("channel %s: %s", self.channel, emit.value["reason"])
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self.exceptions.write, [emit]))
        task.add_done_callback(self._logged)

    def _failed(self, kind: str, message: str) -> NoReturn:
        self._count(kind)
        self.last_error = message
        self.breaker.failure(message)
        raise Transient(kind, message)

    def _count(self, kind: str) -> None:
        self.stats.errors[kind] += 1
        REQUESTS.add(1, {"channel": self.channel, "outcome": kind})

    def _pause(self, seconds: float | None) -> None:
        if seconds:
            self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def _accepted(self, items: Sequence[Item], idem: str) -> None:
        """The platform took these values: persist, then release their keys (the sender goes on meanwhile)."""
        self.acks.append((items, idem, time.monotonic()))
        self.acks_waiting.set()

    async def _ack_writer(self) -> None:
        """Group commit: the acknowledgements of every request that finished meanwhile, in one transaction.

        A key stays in flight until its acknowledgement is persisted: only then may a newer value of it
        go out, so a restart never finds an older acknowledgement than what the platform holds.
        """
        while True:
            await self.acks_waiting.wait()
            self.acks_waiting.clear()
            group, self.acks = self.acks, []
            if not group:
                continue
            try:
                await self.store.ack([(items, idem) for items, idem, _ in group])
            except Exception:
                log.exception("channel %s: persisting %d acknowledgements failed; the values are sent again",
                              self.channel, sum(len(items) for items, _, _ in group))
                self._release([i.ref for items, _, _ in group for i in items])
            else:
                for items, _, at in group:
                    self._settle(items, at)
            self.wake.set()

    def _settle(self, items: Sequence[Item], at: float) -> None:
        """Acknowledged (at: monotonic time of the platform's answer) and persisted: release the keys."""
        mono = time.monotonic()
        with self.lock:
            for item in items:
                if newer(item.fence, self.acked.get(item.ref)):
                    self.acked[item.ref] = item.fence
                self.rejected.pop(item.ref, None)
                if self.inflight.get(item.ref) is item:
                    del self.inflight[item.ref]
        for item in items:
            ms = max(0.0, (at - item.owed_at) * 1000)
            self.stats.latencies.append((mono, ms))
            LATENCY.record(ms, {"channel": self.channel})
        telemetry.sink_latency("push", self.channel, (i.event_ms for i in items))  # source commit -> platform
        self.stats.delivered += len(items)
        newest = max(items, key=lambda i: i.event_ms)
        self.stats.last_position = {"kind": newest.kind, "key": newest.key, "erp": newest.fence[0],
                                    "wms": newest.fence[1], "version": newest.fence[2], "event_ms": newest.event_ms}
        for kind, n in Counter(i.kind for i in items).items():
            DELIVERED.add(n, {"channel": self.channel, "kind": kind})

    async def _rejected(self, item: Item, method: str, body: dict[str, Any], idem: str,
                        response: httpx2.Response) -> None:
        safe_headers = {k: v for k, v in {**self.headers, "Idempotency-Key": idem}.items()
                        if k.lower() not in {"authorization", self.push.auth.header.lower()}}
        reason = (f"{self.channel} rejected {item.kind} {item.key}: HTTP {response.status_code} "
                  f"{' '.join(response.text.split())[:200]}")
        detail = {
            "channel": self.channel, "kind": item.kind, "key": item.key,
            "fence": {"erp": item.fence[0], "wms": item.fence[1], "version": item.fence[2]},
            "request": {"method": method, "url": self.push.url, "headers": safe_headers,
                        "body": _clip(json.dumps(body, sort_keys=True))},
            "response": {"status": response.status_code, "headers": dict(response.headers),
                         "body": _clip(response.text)},
            "replay": "after a fix: erpsync channels replay <this exception's id>",
        }
        emit = exception("channel_rejected", "error", item.kind, f"{self.channel}/{item.key}", reason, detail,
                         int(time.time() * 1000))
        await asyncio.to_thread(self.exceptions.write, [emit])
        await self.store.reject(item, emit.key)
        log.warning("channel %s: %s", self.channel, reason)
        with self.lock:
            self.rejected[item.ref] = item.fence
            self.rejected_at[item.ref] = time.monotonic()
            if self.inflight.get(item.ref) is item:
                del self.inflight[item.ref]

    def _breaker_moved(self, before: str, after: str, why: str) -> None:
        log.info("channel %s: circuit breaker %s -> %s (%s)", self.channel, before, after, why)
        now_ms = int(time.time() * 1000)
        if after == "open" and before == "closed":
            self.down_since = time.time()
            pending, inflight = self.counts()
            reason = (f"channel {self.channel} unavailable: {self.breaker.failures} consecutive failures, "
                      f"last: {why}")
            detail = {"channel": self.channel, "url": self.push.url, "failures": self.breaker.failures,
                      "last_error": why, "opened_at_ms": now_ms, "keys_owed": pending + inflight}
            emit = exception("channel_unavailable", "critical", "channel", self.channel, reason, detail, now_ms)
        elif after == "closed" and self.down_since is not None:
            down_s = time.time() - self.down_since
            self.down_since = None
            reason = f"channel {self.channel} available again after {down_s:.0f}s"
            detail = {"channel": self.channel, "url": self.push.url, "down_s": round(down_s, 1),
                      "closed_at_ms": now_ms}
            emit = exception("channel_unavailable", "critical", "channel", self.channel, reason, detail, now_ms,
                             state="resolved")
        else:
            return
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self.exceptions.write, [emit]))
        task.add_done_callback(self._logged)

    def _logged(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("channel %s: writing an exception failed: %s", self.channel, task.exception())

    def status(self) -> dict[str, Any]:
        pending, inflight = self.counts()
        p50, p99 = self.stats.percentiles()
        return {"channel": self.channel, "breaker": self.breaker.state, "pending": pending, "in_flight": inflight,
                "owed_keys": self.owed_keys(),
                "delivered": self.stats.delivered, "last_position": self.stats.last_position,
                "latency_p50_ms": p50, "latency_p99_ms": p99, "requests_per_s": round(self.stats.rate(), 2),
                "errors": dict(self.stats.errors)}

    async def write_status(self) -> None:
        row = self.status()
        del row["owed_keys"]
        row.update(last_position=Jsonb(row["last_position"]), errors=Jsonb(row["errors"]),
                   started_at=datetime.fromtimestamp(self.stats.started_at, UTC))
        await self.store.status(row)


# ----------------------------------------------------------------------------- engine and sink


class Engine:
    """One asyncio loop in a daemon thread running every push channel's Delivery."""

    def __init__(self, settings: Settings, channels: Sequence[Channel], serialize: Serializer | None,
                 environ: dict[str, str] | None = None) -> None:
        writer = ExceptionWriter(settings, serialize)
        self.deliveries = {c.id: Delivery(settings, c, writer, environ) for c in channels if c.outputs.push}
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.failure: BaseException | None = None

    def start(self, timeout_s: float = 60.0) -> Engine:
        """Start delivering; returns once every channel has loaded what it is owed."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._main, name="erpsync-push", daemon=True)
            self.thread.start()
            _ENGINES.append(self)
        deadline = time.monotonic() + timeout_s
        for d in self.deliveries.values():
            while not d.ready.wait(0.2):
                if self.failure is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"push delivery did not start: {self.failure or 'timed out'}")
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported by start() and the log; the dataflow goes on
            self.failure = exc
            log.exception("push delivery stopped")

    async def _run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            running = [tasks.create_task(d.run()) for d in self.deliveries.values()]
            await self.stopping.wait()
            for d in self.deliveries.values():
                with contextlib.suppress(Exception):
                    await d.write_status()
            for task in running:
                task.cancel()

    def offer(self, emits: Iterable[Emit]) -> None:
        """Hand records to their channels (never blocks on delivery)."""
        by_channel: dict[str, list[Item]] = {}
        for e in emits:
            kind = KIND_OF_SCHEMA.get(e.schema)
            d = self.deliveries.get(e.value.get("channel", ""))
            if kind is None or d is None or kind not in d.push.sends:
                continue
            by_channel.setdefault(d.channel, []).append(item_of(kind, e.value))
        for channel, items in by_channel.items():
            self.deliveries[channel].offer(items)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.loop is not None and self.thread is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stopping.set)
            self.thread.join(timeout_s)
        if self in _ENGINES:
            _ENGINES.remove(self)


_ENGINES: list[Engine] = []


def _observe_pending(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(sum(d.counts()), {"channel": d.channel}) for e in _ENGINES for d in e.deliveries.values()]


def _observe_breaker(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(BREAKER_STATES[d.breaker.state], {"channel": d.channel})
            for e in _ENGINES for d in e.deliveries.values() if hasattr(d, "breaker")]


_meter.create_observable_gauge("erpsync.channel.pending", callbacks=[_observe_pending],
                               description="keys owed to a push channel (pending and in flight)")
_meter.create_observable_gauge("erpsync.channel.breaker", callbacks=[_observe_breaker],
                               description="circuit breaker per push channel: 0 closed, 1 half-open, 2 open")


class PushSink(DynamicSink[Emit]):
    """Availability and OrderStatus records to the push channels' delivery engine (one per process).

    Used by several output steps (availability, order status) and workers: they share the engine,
    started with the first partition.
    """

    def __init__(self, settings: Settings, channels: Sequence[Channel], serialize: Serializer | None) -> None:
        self.settings, self.channels, self.serialize = settings, tuple(channels), serialize
        self.lock = threading.Lock()
        self.engine: Engine | None = None

    def __getstate__(self) -> dict[str, Any]:  # the engine and its lock stay in this process
        return {"settings": self.settings, "channels": self.channels, "serialize": self.serialize}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, lock=threading.Lock(), engine=None)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PushPartition:
        with self.lock:
            if self.engine is None:
                self.engine = Engine(self.settings, self.channels, self.serialize).start()
        return _PushPartition(self.engine)


class _PushPartition(StatelessSinkPartition[Emit]):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write_batch(self, items: list[Emit]) -> None:
        self.engine.offer(items)


def pushes(channels: Sequence[Channel], kind: Kind) -> bool:
    return any(c.outputs.push is not None and kind in c.outputs.push.sends for c in channels)


# ----------------------------------------------------------------------------- operations


STATUS_COLUMNS = ("channel", "breaker", "pending", "in_flight", "delivered", "last_position", "latency_p50_ms",
                  "latency_p99_ms", "requests_per_s", "errors", "started_at", "updated_at")


def status_rows(settings: Settings) -> list[dict[str, Any]]:
    """sync.channel_status, with each channel's acknowledged and rejected keys and open exceptions."""
    with ops_db.connect(settings) as conn:
        rows = [{**dict(zip(STATUS_COLUMNS, r, strict=False)), "age_s": round(float(r[-1]), 1)} for r in conn.execute(
            f"SELECT {', '.join(STATUS_COLUMNS)}, extract(epoch FROM now() - updated_at) FROM sync.channel_status"
            " ORDER BY channel").fetchall()]
        counts = {ch: (int(a), int(r)) for ch, a, r in conn.execute(
            "SELECT channel, count(acked_version), count(rejected_version) FROM sync.channel_deliveries"
            " GROUP BY channel")}
        open_exc = dict(conn.execute(
            "SELECT detail->>'channel', count(*) FROM sync.exceptions WHERE kind IN ('channel_rejected',"
            " 'channel_unavailable') AND state = 'open' GROUP BY 1").fetchall())
    for row in rows:
        row["acknowledged_keys"], row["rejected_keys"] = counts.get(row["channel"], (0, 0))
        row["open_exceptions"] = int(open_exc.get(row["channel"], 0))
    return rows


def replay_rejected(settings: Settings, exception_id: str) -> int:
    """Release the values a channel_rejected exception holds back (after a fix); returns how many keys.

    The running pipeline's next rescan (``ERPSYNC_PUSH__RESCAN_S``) sends their latest values; the
    exception turns ``replayed`` (a new rejection opens it again).
    """
    with ops_db.connect(settings) as conn:
        row = conn.execute("SELECT kind FROM sync.exceptions WHERE id = %s", (exception_id,)).fetchone()
        if row is None or row[0] != "channel_rejected":
            raise ValueError(f"{exception_id} is not a channel_rejected exception")
        cur = conn.execute("UPDATE sync.channel_deliveries SET rejected_pos_erp = NULL, rejected_pos_wms = NULL,"
                           " rejected_version = NULL, rejected_exception = NULL, rejected_at = NULL"
                           " WHERE rejected_exception = %s", (exception_id,))
        conn.execute("UPDATE sync.exceptions SET state = 'replayed', state_changed_at = now() WHERE id = %s",
                     (exception_id,))
        conn.commit()
        return cur.rowcount
