"""Sinks that wait out outages and set aside the records a store refuses.

Every sink write of the live pipeline goes through ``guarded``:

- a *transient* failure (the store is down, restarting, unreachable, out of connections) is retried
  with exponential backoff and jitter (tenacity), for as long as it takes. The worker blocks
  meanwhile, and bytewax's backpressure stops reading input: memory stays bounded, and nothing is
  acknowledged that was not written. A stop request ends the wait (``lifecycle.Stopping``).
- a record the store *refuses* (PostgreSQL rejects a value, Redis a command) is written to the DLQ
  with the store's one-line reason (``reject``) and the rest of the batch goes on.

``HEALTH`` follows each sink: a one-line log when it becomes unavailable and when it is back, a
``erpsync.sink.up`` gauge, the health file ``erpsync stack status`` shows, and a ``sink_unavailable``
exception in the ops database once an outage lasts ``flows.sink_unavailable_after_s`` (resolved when
the sink is back; written as soon as the ops database takes writes, so its own outages show too).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import redis
import tenacity
from confluent_kafka import Producer

from connectors import lifecycle
from erpsync import telemetry
from erpsync.settings import Settings
from state import exception
from state.records import DLQ_TOPIC, Emit

log = logging.getLogger(__name__)
T = TypeVar("T")

# A dependency that is down, restarting or unreachable: wait for it.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
    psycopg.OperationalError, psycopg.InterfaceError,
    ConnectionError, TimeoutError,
)
# The ops database came back without erpsync's tables: migrate and re-seed (see the runner).
STORE_LOST: tuple[type[BaseException], ...] = (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)


def one_line(exc: BaseException) -> str:
    """An error as one line (drivers put hints and contexts on further lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


@dataclass
class SinkState:
    up: bool = True
    since_ms: int = 0
    error: str = ""
    failures: int = 0
    rejected: int = 0
    alerted: bool = False


class Health:
    """Each sink's availability: logs on change, a gauge, the health file, sink_unavailable exceptions."""

    def __init__(self) -> None:
        self.sinks: dict[str, SinkState] = {}
        self.lock = threading.Lock()
        self.file: Path | None = None
        self.settings: Settings | None = None
        self.alert_after_s = 10.0
        self._alerts: queue.Queue[Emit] = queue.Queue()
        self._alerter: threading.Thread | None = None

    def configure(self, settings: Settings, file: Path | None) -> None:
        self.settings, self.file = settings, file
        self.alert_after_s = settings.flows.sink_unavailable_after_s
        self.sinks.clear()
        self._write()
        telemetry.watch_sinks(lambda: {name: st.up for name, st in self.snapshot_states().items()})

    def snapshot_states(self) -> dict[str, SinkState]:
        with self.lock:
            return dict(self.sinks)

    def failed(self, sink: str, exc: BaseException) -> None:
        now = int(time.time() * 1000)
        with self.lock:
            st = self.sinks.setdefault(sink, SinkState())
            st.failures += 1
            st.error = one_line(exc)
            if st.up:
                st.up, st.since_ms = False, now
                log.warning("sink %s unavailable: %s; retrying with backoff until it is back", sink, st.error)
            alert = not st.alerted and now - st.since_ms >= self.alert_after_s * 1000
            if alert:
                st.alerted = True
        if alert:
            self._alert(sink, st, "open", now)
        self._write()

    def ok(self, sink: str) -> None:
        with self.lock:
            st = self.sinks.get(sink)
            if st is None or st.up:
                return
            now = int(time.time() * 1000)
            down_s = (now - st.since_ms) / 1000
            st.up, st.error = True, ""
            alerted, st.alerted = st.alerted, False
            log.info("sink %s is back after %.1f s", sink, down_s)
        if alerted:
            self._alert(sink, st, "resolved", now)
        self._write()

    def rejected(self, sink: str, count: int) -> None:
        with self.lock:
            self.sinks.setdefault(sink, SinkState()).rejected += count
        self._write()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {name: asdict(st) for name, st in self.sinks.items()}

    def _write(self) -> None:
        if self.file is None:
            return
        doc = {"pid": os.getpid(), "written_ms": int(time.time() * 1000), "sinks": self.snapshot()}
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, sort_keys=True))
            tmp.replace(self.file)
        except OSError as exc:  # a full disk must not stop the pipeline
            log.debug("health file %s not written: %s", self.file, exc)

    # sink_unavailable in the ops database, from a thread of its own: a blocked sink never waits for it
    def _alert(self, sink: str, st: SinkState, state: str, now: int) -> None:
        reason = (f"sink {sink} unavailable since {time.strftime('%H:%M:%S', time.gmtime(st.since_ms / 1000))} "
                  f"UTC: {st.error}" if state == "open" else f"sink {sink} is back")
        record = exception("sink_unavailable", "error", "sink", sink, reason, {"sink": sink, "error": st.error},
                           now, state=state)
        self._alerts.put(record)
        if self._alerter is None or not self._alerter.is_alive():
            self._alerter = threading.Thread(target=self._write_alerts, name="sink-alerts", daemon=True)
            self._alerter.start()

    def _write_alerts(self) -> None:
        from connectors.ops_db import write_exceptions  # noqa: PLC0415 - ops_db imports this module

        pending: list[Emit] = []
        while True:
            try:
                pending.append(self._alerts.get(timeout=1 if pending else 30))
            except queue.Empty:
                if not pending:
                    return
            if self.settings is None:
                pending.clear()
                continue
            try:
                write_exceptions(self.settings, pending)
                pending.clear()
            except psycopg.Error as exc:
                log.debug("sink_unavailable not written yet: %s", one_line(exc))
                time.sleep(2)


HEALTH = Health()


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (*TRANSIENT, *STORE_LOST))


def guarded(sink: str, attempt: Callable[[], T], *, drop: Callable[[], None] | None = None,
            transient: Callable[[BaseException], bool] = is_transient, max_wait_s: float = 5.0) -> T:
    """`attempt()` until it succeeds, waiting out transient failures; `drop` discards a broken connection.

    A stop requested while waiting abandons the run (``lifecycle.abandon``); any other error is raised.
    """

    def before_sleep(rs: tenacity.RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        if exc is not None:
            if isinstance(exc, STORE_LOST):
                lifecycle.request_reseed("ops-db", f"its tables are gone ({one_line(exc)})")
            HEALTH.failed(sink, exc)
        if drop is not None:
            try:
                drop()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail too
                log.debug("closing %s's connection failed", sink, exc_info=True)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(transient),
        wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=max_wait_s, jitter=min(0.5, max_wait_s)),
        stop=lambda rs: lifecycle.stop_requested(),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        result = retrying(attempt)
    except Exception as exc:
        if transient(exc):  # only a stop ends the retries
            lifecycle.abandon(f"sink {sink} unavailable at stop: {one_line(exc)}")
        raise
    HEALTH.ok(sink)
    return result


class Rejects:
    """Records a store refused, to the DLQ with the store's reason (one producer per process)."""

    _producer: Producer | None = None
    _lock = threading.Lock()

    @classmethod
    def _producer_of(cls, settings: Settings) -> Producer:
        with cls._lock:
            if cls._producer is None:
                cls._producer = Producer(settings.kafka.client_config() | {"enable.idempotence": True})
            return cls._producer

    @staticmethod
    def _sent(producer: Producer, sink: str, n: int) -> None:
        producer.flush(30)
        telemetry.count(f"sink:{sink}", "dlq", n)
        HEALTH.rejected(sink, n)

    @classmethod
    def send(cls, settings: Settings, sink: str, items: Sequence[tuple[Emit, BaseException]]) -> None:
        if not items:
            return
        producer = cls._producer_of(settings)
        for e, exc in items:
            reason = f"{sink} refused the record: {one_line(exc)}"
            log.warning("%s (topic %s, key %r); sent to %s", reason, e.topic, e.key, DLQ_TOPIC)
            value = json.dumps(e.value, default=str, sort_keys=True).encode()
            headers: list[tuple[str, str | bytes | None]] = [
                ("reason", reason.encode()), ("step", f"sink:{sink}".encode()), ("topic", e.topic.encode()),
                ("partition", b"-1"), ("offset", b"-1"), ("ts", str(e.time).encode())]
            producer.produce(DLQ_TOPIC, key=e.key.encode(), value=value, headers=headers)
        cls._sent(producer, sink, len(items))

    @classmethod
    def send_raw(cls, settings: Settings, sink: str, items: Sequence[tuple[str, bytes | None, str]]) -> None:
        """(topic, key, reason) of records refused without their value (too large to keep)."""
        if not items:
            return
        producer = cls._producer_of(settings)
        for topic, key, reason in items:
            log.warning("%s (key %r); sent to %s without its value", reason, (key or b"")[:80], DLQ_TOPIC)
            producer.produce(DLQ_TOPIC, key=key, value=None, headers=[
                ("reason", reason.encode()), ("step", f"sink:{sink}".encode()), ("topic", topic.encode())])
        cls._sent(producer, sink, len(items))
