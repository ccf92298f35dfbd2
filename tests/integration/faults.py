"""What the fault-injection suite (test_faults.py) needs: a supervised pipeline, outages, a tolerant workload.

- ``Supervised``: `erpsync run` under a supervisor, as docker-compose runs it (``restart:
  unless-stopped``): a pipeline that exits is started again, on the same recovery directory.
- ``outage``: a component of the local stack stopped, then started again (optionally with its data
  wiped: Redis restarted empty).
- ``play``: the reference workload (channel orders, the ERP importer, the WMS), carrying on through
  outages the way their real counterparts would: a step that cannot reach its database is tried again.
- ``duplicates``: what a consumer following the documented read path (``read_committed``, the
  default of librdkafka) would see twice.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pymysql
from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
)

from erpsync.settings import Settings
from erpsync.simulate import Manifest, Workload
from erpsync.stack.components import Component, all_components
from erpsync.stack.connect import ConnectClient
from schemas.registry import SchemaRegistry, make_value_deserializer

from .conftest import Pipeline, read_to_end

log = logging.getLogger(__name__)
TRANSIENT = (psycopg.OperationalError, pymysql.err.OperationalError, pymysql.err.InterfaceError, KafkaException,
             ConnectionError, TimeoutError)


class Supervised:
    """`erpsync run`, started again whenever it exits (a supervisor's restart policy)."""

    def __init__(self, home: Path, *args: str, **env: str) -> None:
        self.pipeline = Pipeline(home, *args, **env)
        self.restarts = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)

    def start(self) -> Supervised:
        self.pipeline.start()
        self.thread.start()
        return self

    def _supervise(self) -> None:
        while not self.stopping.wait(0.5):
            proc = self.pipeline.proc
            if proc is not None and proc.poll() is not None and not self.stopping.is_set():
                log.warning("pipeline exited with %s; starting it again", proc.returncode)
                self.restarts += 1
                try:
                    self.pipeline.start()
                except AssertionError:  # it exited at once: seen (and started again) on the next look
                    log.warning("the restarted pipeline exited at once")

    def kill9(self) -> None:
        self.pipeline.kill9()  # the supervisor starts it again

    def log_size(self) -> int:
        path = self.pipeline.home / "run.log"
        return path.stat().st_size if path.exists() else 0

    def log_since(self, offset: int) -> str:
        with (self.pipeline.home / "run.log").open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.pipeline.proc is not None and self.pipeline.proc.poll() is None

    @property
    def log_text(self) -> str:
        return (self.pipeline.home / "run.log").read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM (a clean stop); returns the exit status."""
        self.stopping.set()
        self.thread.join(5)
        proc = self.pipeline.proc
        if proc is None:
            return None
        proc.terminate()
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return None


def component(settings: Settings, name: str) -> Component:
    return next(c for c in all_components(settings) if c.name == name)


@contextmanager
def outage(settings: Settings, name: str, seconds: float, *, wipe: bool = False) -> Iterator[None]:
    """Stop `name` for `seconds` (inside the block), then start it again and wait until it is healthy."""
    comp = component(settings, name)
    assert comp.stop(), f"{name} was not running"
    if wipe:  # restarted empty: whatever it persisted is gone
        for path in comp.home.iterdir():
            if path.suffix not in (".pid", ".acl", ".conf") and path.name != "launched-config.sha256":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    started = time.monotonic()
    try:
        yield
    finally:
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        comp.start()
        if name in ("kafka", "connect", "postgres", "mariadb"):
            connectors_running(settings)


def connectors_running(settings: Settings, timeout_s: float = 180) -> None:
    """Every Debezium connector and task RUNNING again (Connect recovers them on its own)."""
    client = ConnectClient.of(settings.connect)
    deadline = time.monotonic() + timeout_s
    states: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            states = client.states()
        except Exception as exc:  # noqa: BLE001 - Connect still starting
            states = {"connect": str(exc)}
        if states and all(isinstance(s, dict) and s["connector"] == "RUNNING" and s["tasks"]
                          and set(s["tasks"]) == {"RUNNING"} for s in states.values()):
            return
        time.sleep(2)
    raise AssertionError(f"connectors not RUNNING {timeout_s:.0f}s after the outage: {states}")


def play(work: Workload, orders: int, rate: float, timeout_s: float, started: threading.Event | None = None
         ) -> Manifest:
    """The workload's run, carrying on through outages: a step that fails to reach a system is tried again."""

    def step() -> None:
        try:
            work.step()
        except TRANSIENT as exc:
            log.info("workload step failed (%s); trying again", exc)
            reconnect(work)
            time.sleep(0.5)

    work.seed()
    work.wait_ready(120)
    if started is not None:
        started.set()
    work.orders(orders, rate, on_idle=step, idle_every_s=0.2)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        step()
        try:
            work.manifest.drained = work.drained()
        except TRANSIENT:
            reconnect(work)
            continue
        if work.manifest.drained:
            break
        time.sleep(0.2)
    return work.manifest


def reconnect(work: Workload) -> None:
    """Drop the workload's database connections (broken by an outage); it connects again on next use."""
    work.systems.reconnect()


def duplicates(settings: Settings, registry: SchemaRegistry, topics: list[str], since_ms: int, tag: str
               ) -> dict[tuple[str, str], int]:
    """Records of this run (their key or value names `tag`) a read_committed consumer reads more than once."""
    deserialize = make_value_deserializer(registry, settings.kafka.schema_registry_url)
    seen: Counter[tuple[str, str]] = Counter()
    for msg in read_to_end(settings, topics, since_ms=since_ms):
        raw = msg.value() or b""
        key = (msg.key() or b"").decode(errors="replace")
        if tag not in key and tag.encode() not in raw:
            continue
        topic = msg.topic() or ""
        if topic == "sync.dlq":  # a dead letter stands for its original record
            headers = {k: bytes(v or b"").decode(errors="replace") for k, v in msg.headers() or []}
            identity = "|".join(headers.get(h, "") for h in ("topic", "partition", "offset", "reason"))
        else:
            try:
                _, value = deserialize(topic, raw)
            except Exception:  # noqa: BLE001 - JSON channels
                identity = raw.decode(errors="replace")
            else:
                identity = str(value.get("event_id") or sorted(value.items()))
        seen[(topic, f"{key}|{identity}")] += 1
    return {k: n for k, n in seen.items() if n > 1}


def set_limit(admin: AdminClient, topic: str, max_bytes: str | None) -> None:
    """The topic's max.message.bytes set (None: back to the broker's default), its other settings kept."""
    op = AlterConfigOpType.SET if max_bytes is not None else AlterConfigOpType.DELETE
    entry = ConfigEntry("max.message.bytes", max_bytes or "", incremental_operation=op)
    for future in admin.incremental_alter_configs([ConfigResource(ConfigResource.Type.TOPIC, topic,
                                                                  incremental_configs=[entry])]).values():
        future.result()
