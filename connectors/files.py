"""Files: kcat JSON dumps in, replay output (JSON lines) out (spec section 10).

Input lines are what ``kcat -C -J`` writes: {"topic", "partition", "offset", "key", "payload"}.
Output lines are {"topic", "key", "value"} with the value Avro-encoded and decoded again, so the
replay goes through exactly the serde the live pipeline uses.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from erpsync import telemetry
from erpsync.channels import OutputPlan
from schemas.registry import SchemaRegistry
from state.records import DLQ_TOPIC, DeadLetter, Emit, Ignored, Outcome, Progress, RawRecord, event_ms_of

_BATCH = 2000


def parse_dump_line(line: bytes, line_no: int, path: str) -> RawRecord | DeadLetter:
    """One kcat -J line -> the Kafka record it describes (or a DLQ record saying why not)."""
    try:
        doc = json.loads(line.decode())
        key, payload = doc.get("key"), doc.get("payload")
        topic, partition = str(doc["topic"]), int(doc.get("partition", 0))
        return RawRecord(
            topic, partition, int(doc["offset"]),
            None if key is None else key.encode(),
            None if payload is None else payload.encode(),
            int(doc.get("ts") or 0),
            channel=f"{topic}#{partition}",
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:  # UnicodeDecodeError: ValueError
        raw = RawRecord(f"replay:{path}", 0, line_no, None, line.rstrip(b"\n"))
        return DeadLetter(raw, f"malformed dump line {line_no}: {exc!r}", "replay-input")


def dump_channels(path: Path) -> list[str]:
    """Every "<topic>#<partition>" a dump holds records of (the channels a replay waits for)."""
    return sorted(dump_channel_ends(path))


def dump_channel_ends(path: Path) -> dict[str, int]:
    """Every "<topic>#<partition>" of a dump -> the line of its last record.

    A replay ends each channel after its last line, not at the end of the file: event time need not
    wait for a channel that has nothing more to say (a table changed only at the start of the dump),
    so the stages release as the dump is read instead of buffering all of it.
    """
    ends: dict[str, int] = {}
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            head = _KCAT_HEAD.match(line)  # kcat's own layout: no need to parse the payload
            if head is not None:
                ends[f"{head[1].decode()}#{int(head[2])}"] = n
            elif line.strip():
                rec = parse_dump_line(line, n, str(path))
                if isinstance(rec, RawRecord):
                    ends[rec.read_from] = n
    return ends


# The start of a line as kcat -J writes it: {"topic": "<name>", "partition": <n>, "offset": <n>, ...
# (a topic name has no quote or backslash; a line laid out otherwise is parsed whole).
_KCAT_HEAD = re.compile(rb'\{"topic":\s*"([^"\\]+)",\s*"partition":\s*(\d+),\s*"offset":\s*-?\d+,')


class _DumpPartition(StatefulSourcePartition[RawRecord | DeadLetter | Progress, int]):
    def __init__(self, path: Path, channels: list[str], ends: Mapping[str, int], resume: int | None) -> None:
        self.path = str(path)
        self.channels = channels
        # channels ended early, in the order of their last lines
        self.ends = sorted((line, channel) for channel, line in ends.items() if channel in channels)
        self.fh: IO[bytes] = path.open("rb")
        self.line_no = 0
        self.ended = False
        for _ in range(resume or 0):  # resume after the lines already read
            self.fh.readline()
            self.line_no += 1

    def next_batch(self) -> list[RawRecord | DeadLetter | Progress]:
        if self.ended:
            raise StopIteration
        lines = [line for line in (self.fh.readline() for _ in range(_BATCH)) if line]
        out: list[RawRecord | DeadLetter | Progress] = []
        for line in lines:
            self.line_no += 1
            if line.strip():
                out.append(parse_dump_line(line, self.line_no, self.path))
        while self.ends and self.ends[0][0] <= self.line_no:  # read past a channel's last record
            out.append(Progress(self.ends.pop(0)[1], None))
        if not lines:  # the end of the input is the end of every channel: event time may run out
            self.ended = True
            out.extend(Progress(channel, None) for channel in self.channels)
        return out

    def snapshot(self) -> int:
        return self.line_no

    def close(self) -> None:
        self.fh.close()


class DumpSource(FixedPartitionedSource[RawRecord | DeadLetter | Progress, int]):
    """A kcat JSON dump, read in order (one partition: the dump is one ordered file).

    `channels`: every channel of the dump (``dump_channels``), each ended at the end of the file, or
    after its last line when `ends` (``dump_channel_ends``) says where that is.
    """

    def __init__(self, path: Path, channels: list[str], ends: Mapping[str, int] | None = None) -> None:
        self.path = path
        self.channels = channels
        self.ends = ends or {}

    def list_parts(self) -> list[str]:
        return ["dump"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _DumpPartition:
        return _DumpPartition(self.path, self.channels, self.ends, resume_state)


def to_json(value: Any) -> Any:
    """JSON for decoded Avro values (logical types come back as datetime/date/bytes)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class RedisWrite:
    """What the live Redis sink writes for an Availability record: ``HSET ats:<channel> <sku> <ats>``."""

    channel: str
    sku: str
    ats: int


def replay_line(outcome: Emit | DeadLetter | RedisWrite, registry: SchemaRegistry,
                plan: OutputPlan | None = None) -> str:
    """The spec's replay output line for a produced record, in the format its channel reads.

    A JSON channel's record is its JSON bytes parsed again (``"format": "json"``); every other
    record is Avro-encoded and decoded again. A Redis write is ``{"topic": "redis:ats:<channel>",
    "key": sku, "value": "<ats>"}``: the hash and the string storefronts read (a Kafka topic name
    cannot contain ":", so it is never taken for one).
    """
    if isinstance(outcome, RedisWrite):
        doc: dict[str, Any] = {"topic": f"redis:ats:{outcome.channel}", "key": outcome.sku, "value": str(outcome.ats)}
    elif isinstance(outcome, Emit) and plan is not None and plan.format_of(outcome.topic) == "json":
        doc = {"topic": outcome.topic, "key": outcome.key, "format": "json",
               "value": json.loads(json.dumps(outcome.value, separators=(",", ":")))}
    elif isinstance(outcome, Emit):
        _, decoded = registry.decode(registry.encode(outcome.schema, outcome.value))
        doc = {"topic": outcome.topic, "key": outcome.key, "value": decoded}
    else:
        raw = outcome.raw
        doc = {
            "topic": DLQ_TOPIC,
            "key": None if raw.key is None else raw.key.decode("utf-8", "replace"),
            "value": None if raw.value is None else raw.value.decode("utf-8", "replace"),
            "headers": {"reason": outcome.reason, "step": outcome.step, "topic": raw.topic,
                        "partition": str(raw.partition), "offset": str(raw.offset)},
        }
    return json.dumps(doc, default=to_json, separators=(",", ":"))


class _ReplayPartition(StatefulSinkPartition[Outcome, None]):
    def __init__(self, sink: ReplaySink) -> None:
        self.sink = sink
        self.fh = sink.path.open("w")

    def write_batch(self, values: list[Outcome]) -> None:
        lines = []
        counts = self.sink.counts
        written: dict[str, list[int]] = {}
        for outcome in values:
            if isinstance(outcome, Ignored):
                counts[f"ignored:{outcome.reason}"] += 1
                continue
            if isinstance(outcome, RedisWrite):
                counts[f"redis:ats:{outcome.channel}"] += 1
                lines.append(replay_line(outcome, self.sink.registry, self.sink.plan))
                continue
            topic = outcome.topic if isinstance(outcome, Emit) else DLQ_TOPIC
            counts[topic] += 1
            lines.append(replay_line(outcome, self.sink.registry, self.sink.plan))
            written.setdefault(topic, []).append(event_ms_of(outcome) if isinstance(outcome, Emit) else 0)
        if lines:
            self.fh.write("\n".join(lines) + "\n")
        for topic, times in written.items():  # (replay: event times are the dump's, so this counts writes)
            telemetry.sink_latency("replay", topic, times)
        if telemetry.tracing():
            for outcome in values:
                if isinstance(outcome, Emit) and "event_id" in outcome.value:
                    with telemetry.event_span("sink.replay", outcome.value["event_id"], topic=outcome.topic):
                        pass

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self.fh.close()


class ReplaySink(FixedPartitionedSink[Outcome, None]):
    """Every record the pipeline would produce, one JSON line each, in one file.

    One partition, so all workers' output meets in one writer; per-key order is kept because a
    key's records all come from the same upstream worker. Ignored records are counted, not written.
    """

    def __init__(self, path: Path, registry: SchemaRegistry, plan: OutputPlan | None = None) -> None:
        self.path = path
        self.registry = registry
        self.plan = plan
        self.counts: Counter[str] = Counter()

    def list_parts(self) -> list[str]:
        return ["out"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ReplayPartition:
        return _ReplayPartition(self)
