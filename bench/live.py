"""What the live benches share: a backlog of ``bench.workload`` records in the raw topics of the local stack,
the values the pipeline must end with (from ``erpsync replay`` over the same records), and ``erpsync run``
as a separate process whose CPU time is read from /proc.

Each run works on its own raw topics: the Debezium connectors are paused (the pipeline's own writes
to the ERP intake table must not come back through them: the backlog already holds what they would
capture), the workload's raw topics are deleted and recreated, and the backlog is produced with its
records' timestamps. The stores are shared with other runs, so every id carries a run tag, and
``reset_stores`` clears a tag's values and fences before a run. The history ends more than the
longest SLA before now, so every deadline has passed live as it has at the end of a replay, and the
final values of the two must agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.workload import Record, Workload
from connectors import kafka
from connectors.redis import client as redis_client
from erpsync.settings import Settings
from erpsync.stack.connect import ConnectClient
from state.changes import TRANSACTION_SUFFIX

CONNECTORS = ("erp-postgres", "wms-mariadb")
REDIS_CHANNELS = ("b2b-portal", "marketplace", "inside-sales")
JSON_CHANNEL = "inside-sales"  # its Kafka topics are JSON: the bench reads their final values without Avro
SLA_MARGIN_MS = 5 * 3600 * 1000  # more than every SLA and TTL of the default settings


def backlog(settings: Settings, n: int, *, skus: int, tag: str, seed: int = 7) -> tuple[list[Record], int]:
    """`n` workload records whose history ends SLA_MARGIN_MS before now; (records, change events among them)."""
    span = 0
    for r in Workload(skus=skus, customers=min(1000, skus), seed=seed, tag=tag, start_ms=0).records(n):
        span = r.ts
    start = int(time.time() * 1000) - span - SLA_MARGIN_MS
    records = list(Workload(skus=skus, customers=min(1000, skus), seed=seed, tag=tag, start_ms=start).records(n))
    changes = sum(1 for r in records if not r.topic.endswith(".transaction"))
    return records, changes


def write_dump(records: list[Record], path: Path) -> None:
    offsets: dict[str, int] = {}
    with path.open("w") as fh:
        for r in records:
            offsets[r.topic] = offsets.get(r.topic, -1) + 1
            fh.write(r.kcat(offsets[r.topic]) + "\n")


@dataclass
class Expected:
    """The final values of a replay of the backlog: what the live pipeline must end with."""

    ats: dict[str, dict[str, int]] = field(default_factory=dict)  # channel -> sku -> ats (Redis)
    status: dict[tuple[str, str], str] = field(default_factory=dict)  # (channel, external id) -> status
    exceptions: dict[str, str] = field(default_factory=dict)  # id -> state
    json_topics: dict[tuple[str, str], Any] = field(default_factory=dict)  # (topic, key) -> final (JSON channel)
    replay_s: float = 0.0

    @classmethod
    def of_replay(cls, dump: Path, work: Path) -> Expected:
        out = work / "replay.jsonl"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "erpsync", "replay", "--input", str(dump), "--output", str(out)],
                       check=True, stdout=subprocess.DEVNULL, stderr=(work / "replay.log").open("wb"))
        e = cls(replay_s=time.perf_counter() - start)
        seen: dict[str, dict[str, Any]] = {}
        with out.open() as fh:
            for line in fh:
                r = json.loads(line)
                topic, key, v = r["topic"], r["key"], r["value"]
                if topic.startswith("redis:ats:"):
                    e.ats.setdefault(topic.removeprefix("redis:ats:"), {})[key] = int(v)
                elif topic.startswith("order-status."):
                    e.status[(v["channel"], v["external_order_id"])] = v["status"]
                elif topic == "sync.exceptions":
                    old = seen.get(v["id"])
                    if old is None or (v["last_seen_ms"], v["state"] == "resolved") >= (
                            old["last_seen_ms"], old["state"] == "resolved"):
                        seen[v["id"]] = v
                if topic in (f"availability.{JSON_CHANNEL}", f"order-status.{JSON_CHANNEL}"):
                    e.json_topics[(topic, key)] = _final_of(topic, v)
        e.exceptions = {i: v["state"] for i, v in seen.items()}
        return e


def _final_of(topic: str, v: dict[str, Any]) -> Any:
    """What a channel acts on (spec 5a): ats and status of availability, the status of an order."""
    return (v["ats"], v["status"]) if topic.startswith("availability.") else v["status"]


# ----------------------------------------------------------------------------- the stack


def pause_connectors(settings: Settings, pause: bool) -> None:
    client = ConnectClient.of(settings.connect)
    for name in CONNECTORS:
        with contextlib.suppress(Exception):  # a stack without that connector: nothing to pause
            client._request("PUT", f"/connectors/{name}/{'pause' if pause else 'resume'}")


def reset_topics(settings: Settings, records: list[Record]) -> list[str]:
    """Delete and recreate the backlog's raw topics (``kafka.partitions`` each, as Connect makes them), empty."""
    topics = sorted({r.topic for r in records})
    admin = AdminClient(settings.kafka.client_config())
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [t for t in topics if t in existing]
    for future in admin.delete_topics(doomed).values() if doomed else ():
        future.result()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            kafka.ensure_topics(settings, [t for t in topics if not t.endswith(TRANSACTION_SUFFIX)])
            kafka.ensure_topics(settings, [t for t in topics if t.endswith(TRANSACTION_SUFFIX)], partitions=1)
            break
        except Exception:  # noqa: BLE001 - deletion still in progress ("marked for deletion")
            time.sleep(0.5)
    return topics


def produce(settings: Settings, records: list[Record]) -> float:
    """Every record, with its timestamp; returns the seconds it took."""
    producer = Producer(settings.kafka.client_config() | {"linger.ms": 50, "batch.size": 1_000_000,
                                                          "compression.type": "lz4", "acks": "all"})
    start = time.perf_counter()
    send(producer, records)
    producer.flush(120)
    return time.perf_counter() - start


def send(producer: Producer, records: list[Record]) -> None:
    """Hand every record to the producer with its timestamp, waiting when its queue is full."""
    for r in records:
        while True:
            try:
                producer.produce(r.topic, None if r.value is None else r.value.encode(),
                                 None if r.key is None else r.key.encode(), timestamp=r.ts)
                break
            except BufferError:
                producer.poll(0.05)


def floor(settings: Settings, topics: list[str], n: int) -> tuple[float, float]:
    """The floor: one confluent-kafka consumer reads the backlog and JSON-parses key, value and channel order.

    Returns (seconds, CPU seconds) to read all `n` records.
    """
    consumer = Consumer(settings.kafka.client_config() | {"group.id": f"bench-floor-{time.time_ns()}",
                                                          "enable.auto.commit": False,
                                                          "fetch.max.bytes": 52_428_800})
    layout = kafka.topic_partitions(settings)
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in layout.get(t, [0])])
    start, cpu = time.perf_counter(), time.process_time()
    seen = 0
    loads = json.loads
    while seen < n:
        for msg in consumer.consume(10_000, 1.0):
            if msg.error():
                continue
            seen += 1
            key, value = msg.key(), msg.value()
            if key is not None and msg.topic() != "commerce.orders":
                loads(key)
            if value is not None:
                loads(value)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    consumer.close()
    return elapsed, cpu


def reset_stores(settings: Settings, expected: Expected) -> None:
    """Forget this tag's values and fences in Redis and the ops database (a run starts from nothing)."""
    store = redis_client(settings)
    for channel, values in expected.ats.items():
        skus = list(values)
        for i in range(0, len(skus), 5000):
            chunk = skus[i:i + 5000]
            store.hdel(f"ats:{channel}", *chunk)
            store.hdel(f"ats-version:{channel}", *chunk)  # the fence: versions restart with fresh state
    with _ops(settings) as conn:
        skus = [s for values in expected.ats.values() for s in values]
        conn.execute("DELETE FROM sync.availability WHERE sku = ANY(%s)", (skus,))
        conn.execute("DELETE FROM sync.order_status WHERE external_order_id = ANY(%s)",
                     ([ext for _, ext in expected.status],))
        conn.execute("DELETE FROM sync.exceptions WHERE id = ANY(%s)", (list(expected.exceptions),))


def _ops(settings: Settings) -> psycopg.Connection[Any]:
    o = settings.ops
    return psycopg.connect(host=o.host, port=o.port, dbname=o.dbname, user=o.user,
                           password=o.password.get_secret_value(), autocommit=True)


# ----------------------------------------------------------------------------- is every output final?


class Finality:
    """Polls the stores (Redis, ops tables) and the JSON channel's compacted topics against `expected`."""

    def __init__(self, settings: Settings, expected: Expected) -> None:
        self.settings, self.expected = settings, expected
        self.redis = redis_client(settings, reader=True)
        self.ops = _ops(settings)
        topics = sorted({t for t, _ in expected.json_topics})
        self.consumer = Consumer(settings.kafka.client_config() | {
            "group.id": f"bench-final-{time.time_ns()}", "enable.auto.commit": False,
            "isolation.level": "read_committed"})
        kafka.ensure_topics(settings, topics, {"cleanup.policy": "compact"})  # as erpsync run makes them
        layout = kafka.topic_partitions(settings)
        parts = [TopicPartition(t, p) for t in topics for p in layout.get(t, [0])]
        self.consumer.assign([TopicPartition(tp.topic, tp.partition,
                                             self.consumer.get_watermark_offsets(tp, 10)[1]) for tp in parts])
        self.topic_values: dict[tuple[str, str], Any] = {}
        self.missing: dict[str, int] = {}

    def done(self) -> bool:
        """Whether every output holds its final value now (`missing` says what does not, by store)."""
        self._read_topics()
        e = self.expected
        missing = {"redis": 0, "order_status": 0, "exceptions": 0, "kafka": 0}
        for channel, values in e.ats.items():
            skus = list(values)
            for i in range(0, len(skus), 10_000):
                chunk = skus[i:i + 10_000]
                got = self.redis.hmget(f"ats:{channel}", chunk)
                missing["redis"] += sum(1 for s, g in zip(chunk, got, strict=True)
                                        if g is None or int(g) != values[s])
        rows = self.ops.execute("SELECT channel, external_order_id, status FROM sync.order_status"
                                " WHERE external_order_id = ANY(%s)", ([ext for _, ext in e.status],)).fetchall()
        got_status = {(c, x): s for c, x, s in rows}
        missing["order_status"] = sum(1 for k, s in e.status.items() if got_status.get(k) != s)
        rows = self.ops.execute("SELECT id, state FROM sync.exceptions WHERE id = ANY(%s)",
                                (list(e.exceptions),)).fetchall()
        got_exc = dict(rows)
        missing["exceptions"] = sum(1 for k, s in e.exceptions.items() if got_exc.get(k) != s)
        missing["kafka"] = sum(1 for k, v in e.json_topics.items() if self.topic_values.get(k) != v)
        self.missing = missing
        return not any(missing.values())

    def _read_topics(self) -> None:
        while True:
            batch = self.consumer.consume(10_000, 0.2)
            if not batch:
                return
            for msg in batch:
                if msg.error() or msg.value() is None:
                    continue
                key = msg.key().decode()
                self.topic_values[(msg.topic(), key)] = _final_of(msg.topic(), json.loads(msg.value()))

    def close(self) -> None:
        self.consumer.close()
        self.ops.close()


# ----------------------------------------------------------------------------- the pipeline


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process and its running children (all threads), from /proc.

    A local cluster (`erpsync run --processes N`) is a supervisor and its N pipeline processes.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in children(pid))


def children(pid: int) -> list[int]:
    """The running child processes of `pid`."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def rss_mib(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of a running process, MiB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


@dataclass(frozen=True)
class Running:
    proc: subprocess.Popen[bytes]
    recovery: Path  # its recovery directory (bytewax's sqlite stores)


@contextlib.contextmanager
def pipeline(workers: int, work: Path, checkout: Path | None = None, processes: int = 1,
             **env: str) -> Iterator[Running]:
    """`erpsync run` with fresh state (its own recovery directory) and `workers` workers; stopped with SIGINT.

    `checkout`: run the code of another checkout of erpsync (a worktree of an older commit: before/after).
    `processes`: more than 1 runs a local cluster (`erpsync run --processes N`) of `workers` workers each.
    """
    recovery = Path(tempfile.mkdtemp(prefix="recovery-", dir=work))
    recovery.rmdir()  # erpsync run initializes a directory that does not exist yet
    environ = dict(os.environ, ERPSYNC_FLOWS__RECOVERY_DIR=str(recovery), ERPSYNC_FLOWS__WORKERS=str(workers), **env)
    log = (work / f"run-{recovery.name}.log").open("wb")
    cluster = ["--processes", str(processes)] if processes > 1 else []
    proc = subprocess.Popen([sys.executable, "-m", "erpsync", "run", *cluster], env=environ, stdout=log,
                            stderr=subprocess.STDOUT, cwd=checkout)  # `python -m` imports from its cwd first
    try:
        yield Running(proc, recovery)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
