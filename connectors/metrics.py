"""Counters for records that end in no topic (ignored with a reason), exported via OpenTelemetry."""

from __future__ import annotations

import logging

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from opentelemetry import metrics

from state.records import Ignored

log = logging.getLogger(__name__)
_meter = metrics.get_meter("erpsync")
_ignored = _meter.create_counter("erpsync.records.ignored", description="input records ignored, by reason")


class IgnoredCounter(DynamicSink[Ignored]):
    """Counts ignored records by reason and step input topic; nothing is dropped without a count."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition()


class _Partition(StatelessSinkPartition[Ignored]):
    def write_batch(self, items: list[Ignored]) -> None:
        for item in items:
            _ignored.add(1, {"reason": item.reason, "topic": item.topic})
            log.debug("ignored %s", item.reason,
                      extra={"topic": item.topic, "partition": item.partition, "offset": item.offset})
