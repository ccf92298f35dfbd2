"""OpenTelemetry: metrics and traces of the pipeline, exported to the console or an OTLP collector.

Metrics (meter "erpsync"):
- ``erpsync.records`` (counter): records per step and outcome (``in``, ``out``, ``dlq``, ``ignored``).
- ``erpsync.exceptions`` (counter): exceptions raised, by kind.
- ``erpsync.sync.latency`` (histogram, ms): source commit -> sink write, by sink and topic.
- ``erpsync.consumer.lag`` (observable gauge): records behind the end of each input partition.
- ``erpsync.records.ignored`` (counter, connectors.metrics): ignored records by reason.
- ``erpsync.sink.up`` (observable gauge, 1/0 per sink): whether each sink's store takes writes now.
Traces (tracer "erpsync"): one trace per canonical event, its id derived from the event id, so the
spans of every step that handles the event (raw read + canonicalize, each sink write) share it
without passing a context along with the record. Sampled (``ERPSYNC_TELEMETRY__TRACE_SAMPLE``).

``setup`` installs the exporters named in settings; without it the OpenTelemetry API is a no-op,
so tests and replay cost nothing. Nothing here sees credentials.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from erpsync.settings import Settings

log = logging.getLogger(__name__)
_meter = metrics.get_meter("erpsync")
_tracer = trace.get_tracer("erpsync")
RECORDS = _meter.create_counter("erpsync.records", description="records per step and outcome")
EXCEPTIONS = _meter.create_counter("erpsync.exceptions", description="exceptions raised, by kind")
LATENCY = _meter.create_histogram("erpsync.sync.latency", unit="ms",
                                  description="source commit to sink write, per sink and topic")

# Input progress for the lag gauge: (topic, partition) -> next offset to read; ends read by the gauge.
_positions: dict[tuple[str, int], int] = {}
_trace_sample = 0.0


def count(step: str, outcome: str, n: int = 1) -> None:
    RECORDS.add(n, {"step": step, "outcome": outcome})


def watch_sinks(states: Callable[[], dict[str, bool]]) -> None:
    """Register the sink availability gauge over `states` (sink -> up; connectors.resilience.HEALTH)."""

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(up), {"sink": sink}) for sink, up in states().items()]

    _meter.create_observable_gauge("erpsync.sink.up", callbacks=[observe],
                                   description="1 while a sink's store takes writes, 0 while it waits for it")


def consumed(topic: str, partition: int, offset: int) -> None:
    """The Kafka input read this offset (for the lag gauge)."""
    _positions[(topic, partition)] = offset + 1


def sink_latency(sink: str, topic: str, event_ms: Iterable[int]) -> None:
    """Record source-commit-to-write latency of records just written (event_ms: their source commit time)."""
    now = time.time() * 1000
    attrs = {"sink": sink, "topic": topic}
    for ms in event_ms:
        if ms > 0:
            LATENCY.record(max(0.0, now - ms), attrs)


def tracing() -> bool:
    return _trace_sample > 0


def sampled(event_id: str) -> bool:
    """Whether this event is traced (deterministic: every step agrees without talking)."""
    if _trace_sample <= 0:
        return False
    return int(event_id[-8:], 16) / 0xFFFFFFFF < _trace_sample if _is_hex(event_id[-8:]) else True


@contextmanager
def event_span(name: str, event_id: str, **attributes: Any) -> Iterator[None]:
    """A span in the trace of one canonical event (trace id from the event id), if it is sampled."""
    if not sampled(event_id):
        yield
        return
    digest = hashlib.blake2b(event_id.encode(), digest_size=24).digest()
    parent = SpanContext(trace_id=int.from_bytes(digest[:16], "big") or 1, span_id=int.from_bytes(digest[16:], "big")
                         or 1, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with _tracer.start_as_current_span(name, context=trace.set_span_in_context(NonRecordingSpan(parent)),
                                       attributes={"erpsync.event_id": event_id, **attributes}):
        yield


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def setup(settings: Settings) -> None:
    """Install the configured exporters (once, at the start of `erpsync run`)."""
    global _trace_sample
    cfg = settings.telemetry
    if cfg.exporter == "none":
        return
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter  # noqa: PLC0415

    resource = Resource.create({"service.name": "erpsync"})
    if cfg.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        metric_exporter: Any = OTLPMetricExporter(endpoint=f"{cfg.otlp_endpoint}/v1/metrics")
        span_exporter: Any = OTLPSpanExporter(endpoint=f"{cfg.otlp_endpoint}/v1/traces")
    else:
        metric_exporter, span_exporter = ConsoleMetricExporter(), ConsoleSpanExporter()
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=int(cfg.interval_s * 1000))
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(tracer_provider)
    _trace_sample = cfg.trace_sample
    watch_lag(settings)
    log.info("telemetry: %s exporter, every %.0fs, tracing %.1f%% of events", cfg.exporter, cfg.interval_s,
             100 * cfg.trace_sample)


def enable_tracing(sample: float) -> None:
    """Trace this share of events (tests and `setup`)."""
    global _trace_sample
    _trace_sample = sample


def watch_lag(settings: Settings) -> None:
    """Register the consumer-lag gauge: partition end offset minus the next offset the pipeline reads."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition  # noqa: PLC0415

    consumer = Consumer(settings.kafka.client_config() | {"group.id": "erpsync-lag-probe", "enable.auto.commit": False})

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for (topic, partition), next_offset in list(_positions.items()):
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=2, cached=False)
            except KafkaException as exc:  # a probe that fails reports nothing this round
                log.debug("lag probe for %s[%d] failed: %s", topic, partition, exc)
                continue
            out.append(Observation(max(0, high - next_offset), {"topic": topic, "partition": partition}))
        return out

    _meter.create_observable_gauge("erpsync.consumer.lag", callbacks=[observe],
                                   description="records behind the end of each input partition")
