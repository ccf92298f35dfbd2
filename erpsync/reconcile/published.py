"""Reading what channels were told: the ops database, Redis, push acknowledgements, the channel topics.

``sync.availability`` and ``sync.order_status`` with the KPI inputs the ops database holds (sync
latency, open exceptions); Redis ``ats:<channel>`` as storefronts read it; the ATS each push channel
acknowledged; and, for ``--topics``, the latest records of the compacted channel topics. Separate from
``sources``: these are the pipeline's outputs, read with the pipeline's logins.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from psycopg.rows import dict_row

from connectors import ops_db
from connectors.redis import client as redis_client
from erpsync.reconcile.facts import Published, TopicValues
from erpsync.reconcile.kpis import Latency
from erpsync.reconcile.scope import like_glob, like_regex
from erpsync.settings import Settings
from state.channels import Channel

_OPS_AVAILABILITY = """
SELECT channel, sku, ats, on_hand, allocated, in_transit, committed_open, intake_reserved, safety_stock,
       network, status, event_time_ms, written_at
FROM sync.availability
WHERE sku LIKE %s
"""
_OPS_ORDER_STATUS = """
SELECT channel, external_order_id, order_id, status, reasons, lines, carriers, tracking_numbers, last_fact_ms,
       written_at
FROM sync.order_status
WHERE external_order_id LIKE %s
"""
# Source commit -> sink write, per sink and overall (ROLLUP's NULL row); percentile_disc is nearest rank.
_OPS_LATENCY = """
WITH samples AS (
    SELECT 'availability' AS sink, extract(epoch FROM written_at) * 1000 - event_time_ms AS ms
    FROM sync.availability
    WHERE sku LIKE %(skus)s AND written_at >= to_timestamp(%(since_ms)s / 1000.0) AND event_time_ms > 0
    UNION ALL
    SELECT 'order_status', extract(epoch FROM written_at) * 1000 - last_fact_ms
    FROM sync.order_status
    WHERE external_order_id LIKE %(orders)s AND written_at >= to_timestamp(%(since_ms)s / 1000.0)
      AND last_fact_ms > 0
)
SELECT coalesce(sink, 'all'), count(*),
       percentile_disc(0.5) WITHIN GROUP (ORDER BY ms), percentile_disc(0.99) WITHIN GROUP (ORDER BY ms)
FROM samples
GROUP BY ROLLUP (sink)
"""
# Exceptions are in scope by their business key: "<channel>/<sku>" (availability), "<sku>" (item),
# "<channel>/<external order id>[/...]" (orders); other entities only when nothing is filtered.
_OPS_SCOPE = """
CASE
    WHEN entity = 'availability' THEN substr(business_key, strpos(business_key, '/') + 1) LIKE %(skus)s
    WHEN entity = 'item' THEN business_key LIKE %(skus)s
    WHEN entity IN ('order', 'channel_order', 'order_intake') THEN split_part(business_key, '/', 2) LIKE %(orders)s
    ELSE %(unfiltered)s
END
"""
_OPS_OPEN_EXCEPTIONS = f"SELECT kind, count(*) FROM sync.exceptions WHERE state = 'open' AND {_OPS_SCOPE} GROUP BY kind"
_OPS_EXCEPTION_ORDERS = """
SELECT DISTINCT split_part(business_key, '/', 1) || '/' || split_part(business_key, '/', 2)
FROM sync.exceptions
WHERE entity IN ('order', 'channel_order', 'order_intake') AND split_part(business_key, '/', 2) LIKE %(orders)s
"""


def read_ops(settings: Settings, sku_like: str | None, order_like: str | None, since_ms: int | None) -> Published:
    params = {"skus": sku_like or "%", "orders": order_like or "%", "since_ms": since_ms or 0,
              "unfiltered": sku_like is None and order_like is None}
    with ops_db.connect(settings) as conn:
        conn.read_only = True
        rows = conn.cursor(row_factory=dict_row)
        availability: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows.execute(_OPS_AVAILABILITY, (params["skus"],)):
            pair = (row.pop("channel"), row.pop("sku"))
            availability[pair] = {**row, "written_at": str(row["written_at"])}
        statuses: dict[str, dict[str, Any]] = {}
        for row in rows.execute(_OPS_ORDER_STATUS, (params["orders"],)):
            order_key = f"{row.pop('channel')}/{row.pop('external_order_id')}"
            statuses[order_key] = {**row, "written_at": str(row["written_at"])}
        latency = {sink: Latency(0, None, None) for sink in ("availability", "order_status", "all")}
        for sink, count, p50, p99 in conn.execute(_OPS_LATENCY, params):
            latency[sink] = Latency(int(count), _ms(p50), _ms(p99))
        exists = conn.execute("SELECT to_regclass('sync.exceptions') IS NOT NULL").fetchone()
        open_exceptions, exception_orders = None, set()
        if exists and exists[0]:
            open_exceptions = {k: int(n) for k, n in conn.execute(_OPS_OPEN_EXCEPTIONS, params)}
            exception_orders = {k for (k,) in conn.execute(_OPS_EXCEPTION_ORDERS, params)}
    return Published(availability, statuses, latency, open_exceptions, exception_orders)


def _ms(value: Decimal | None) -> float | None:
    return None if value is None else round(float(value), 1)


def read_redis(settings: Settings, channels: Sequence[Channel], sku_like: str | None) -> dict[str, dict[str, str]]:
    """Per channel, sku -> raw value of ``ats:<channel>`` for the SKUs matching (HSCAN: none is missed)."""
    client = redis_client(settings, reader=True)
    glob, exact = like_glob(sku_like), like_regex(sku_like)
    try:
        out: dict[str, dict[str, str]] = {}
        for c in channels:
            values = out.setdefault(c.id, {})
            for sku, raw in client.hscan_iter(f"ats:{c.id}", match=glob, count=1000):
                name = sku.decode()
                if exact.fullmatch(name):
                    values[name] = raw.decode()
        return out
    finally:
        client.close()


def read_push_acks(settings: Settings, channels: Sequence[str], sku_like: str | None) -> dict[tuple[str, str], int]:
    """(channel, sku) -> the ATS each push channel acknowledged (connectors.http_channels)."""
    if not channels:
        return {}
    with ops_db.connect(settings) as conn:
        exists = conn.execute("SELECT to_regclass('sync.channel_deliveries') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return {}
        return {(ch, sku): int(ats) for ch, sku, ats in conn.execute(
            "SELECT channel, key, acked_ats FROM sync.channel_deliveries WHERE kind = 'availability'"
            " AND acked_ats IS NOT NULL AND channel = ANY(%s) AND key LIKE %s", (list(channels), sku_like or "%"))}


def read_topic_tails(settings: Settings, topics: Sequence[str], records: int,
                     keep: Callable[[str, str], bool]) -> tuple[TopicValues, list[str]]:
    """The latest value of each key among the last `records` records of each topic (None: a tombstone).

    A compacted topic keeps each key's latest record nearest its end, so a key seen in the tail is
    seen with its latest value; keys only older than the tail are not returned (and not compared).
    """
    from schemas.registry import SchemaRegistry, make_value_deserializer  # noqa: PLC0415 - only for --topics

    deserialize = make_value_deserializer(SchemaRegistry.load(), settings.kafka.schema_registry_url)
    consumer = Consumer(settings.kafka.client_config() | {"group.id": "erpsync-reconcile", "enable.auto.commit": False,
                                                          "enable.partition.eof": True})
    latest: TopicValues = {}
    notes: list[str] = []
    try:
        meta = consumer.list_topics(timeout=10)
        assignment, ends = [], {}
        for topic in topics:
            if topic not in meta.topics:
                notes.append(f"topic {topic}: does not exist, not compared")
                continue
            partitions = sorted(meta.topics[topic].partitions)
            per_partition = max(1, math.ceil(records / len(partitions)))
            total = skipped = 0
            for p in partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                start = max(low, high - per_partition)
                total, skipped = total + high - low, skipped + start - low
                if high > start:
                    assignment.append(TopicPartition(topic, p, start))
                    ends[(topic, p)] = high
            if skipped:
                notes.append(f"topic {topic}: read the last {total - skipped} of {total} records; keys only in "
                             f"older records were not compared")
        consumer.assign(assignment)
        while ends:
            msg = consumer.poll(5.0)
            if msg is None:
                raise KafkaException(f"no record within 5 s while reading {sorted(ends)}")
            topic, partition = msg.topic() or "", msg.partition() or 0
            if msg.error() is None:
                key = (msg.key() or b"").decode()
                raw = msg.value()
                if keep(topic, key):
                    latest[(topic, key)] = None if raw is None else (
                        json.loads(raw) if raw[:1] == b"{" else deserialize(topic, raw)[1])
            if msg.error() is not None or (msg.offset() or 0) + 1 >= ends.get((topic, partition), 0):
                ends.pop((topic, partition), None)
    finally:
        consumer.close()
    return latest, notes
