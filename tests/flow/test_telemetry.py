"""Telemetry with in-memory exporters: the pipeline's counters, latency histogram and event traces."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from erpsync import telemetry
from erpsync.runner import replay
from erpsync.settings import load_settings
from schemas.registry import SchemaRegistry
from state.records import Emit, RawRecord, event_ms_of


@pytest.fixture(scope="module")
def otel() -> Iterator[tuple[InMemoryMetricReader, InMemorySpanExporter]]:
    reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)
    telemetry.enable_tracing(1.0)
    yield reader, spans
    telemetry.enable_tracing(0.0)


def points(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    """Cumulative data points of one metric, by attributes."""
    out: dict[tuple[tuple[str, Any], ...], Any] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    for p in m.data.data_points:
                        out[tuple(sorted(p.attributes.items()))] = p
    return out


def test_counters_latency_and_traces_hold_the_right_counts(
        otel: tuple[InMemoryMetricReader, InMemorySpanExporter], tmp_path: Path, captured: list[RawRecord],
        registry: SchemaRegistry) -> None:
    reader, spans = otel
    before_records = {k: p.value for k, p in points(reader, "erpsync.records").items()}
    before_latency = {k: p.count for k, p in points(reader, "erpsync.sync.latency").items()}
    dump = tmp_path / "dump.jsonl"
    dump.write_text("".join(json.dumps({
        "topic": r.topic, "partition": r.partition, "offset": r.offset, "ts": 1_795_000_000_000 + i,
        "key": r.key.decode() if r.key is not None else None,
        "payload": r.value.decode() if r.value is not None else None}) + "\n" for i, r in enumerate(captured))
        + json.dumps({"topic": "erp.erp.items", "partition": 0, "offset": 10**9, "key": "{}", "payload": "{oops"})
        + "\ngarbage\n")
    out = tmp_path / "out.jsonl"
    counts = replay(load_settings(), registry, dump, out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]

    # what the read step must have counted, from what the replay wrote (no channel orders here)
    expected = {
        "out": sum(1 for line in lines if line["topic"].startswith("canonical.")
                   or line["topic"] == "sync.exceptions" and line["value"]["kind"] == "sor_violation"),
        "dlq": counts["sync.dlq"] - 1,  # all but the garbage dump line
        "ignored": sum(n for k, n in counts.items() if k.startswith("ignored:")),
    }
    assert expected["out"] and expected["dlq"] and expected["ignored"]
    records = {k: p.value - before_records.get(k, 0) for k, p in points(reader, "erpsync.records").items()}
    by = {(dict(k)["step"], dict(k)["outcome"]): v for k, v in records.items()}
    assert by[("input", "dlq")] == 1  # the garbage line
    assert by[("read", "in")] == len(captured) + 1
    for outcome in ("out", "dlq", "ignored"):
        assert by.get(("read", outcome), 0) == expected[outcome], outcome
    assert by[("network", "in")] > 0 and by[("ats", "out")] > 0  # every keyed step counts what it handled

    # one latency sample per record written (the replay sink stands for the live sinks here)
    # (a record with no source time, like the exception of a dead letter without a timestamp, has no latency)
    written = Counter(line["topic"] for line in lines if line["topic"] != "sync.dlq"
                      and not line["topic"].startswith("redis:")  # the Redis view: no Kafka latency
                      and event_ms_of(Emit(line["topic"], line["key"], "", line["value"])) > 0)
    latency = {dict(k)["topic"]: p.count - before_latency.get(k, 0)
               for k, p in points(reader, "erpsync.sync.latency").items() if dict(k)["sink"] == "replay"}
    assert {t: n for t, n in latency.items() if n} == dict(written)

    # one trace per canonical event, from the raw record to the sink, its id derived from the event id
    canonical = [line["value"]["event_id"] for line in lines if line["topic"].startswith("canonical.")]
    by_event: dict[str, list[Any]] = {}
    for span in spans.get_finished_spans():
        by_event.setdefault(str((span.attributes or {}).get("erpsync.event_id")), []).append(span)
    for event_id in canonical:
        names = sorted(s.name for s in by_event[event_id])
        assert names == ["canonicalize", "sink.replay"], (event_id, names)
        assert len({s.context.trace_id for s in by_event[event_id]}) == 1
        assert by_event[event_id][0].attributes["raw_topic"].startswith(("erp.", "wms."))  # type: ignore[index]
