"""Reading Kafka topics that may not exist yet.

A captured table's raw topic appears with its first change (Debezium creates it), and a fresh
pipeline creates its output topics when it starts: a reader that resolves partitions once, before
that, never reads them (or, asking ``offsets_for_times`` about no partition at all, fails with
"Local: Invalid argument"). ``Follower`` assigns each partition as it appears; ``start_positions``
is the one-shot form for readers that only want what exists now.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from erpsync.settings import Settings

log = logging.getLogger(__name__)

def client_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Configuration of a Kafka client of the command line: erpsync's login and the client logger.

    librdkafka's lines go through the rate-limited client logger (``erpsync.logs``); the command
    line shows them with ``-v``.
    """
    return settings.kafka.client_config() | extra


def start_positions(consumer: Consumer, partitions: Sequence[tuple[str, int]],
                    since_ms: int | None) -> list[TopicPartition]:
    """Where to start reading each (topic, partition): its beginning, or its first record at or after since_ms.

    A partition with nothing since since_ms starts at its end as of *before* the time lookup, so a
    record written meanwhile is not skipped. Partitions whose offsets cannot be looked up yet (a
    topic just created, no leader) are left out; asking about none at all is fine.
    """
    if since_ms is None:
        return [TopicPartition(t, p, OFFSET_BEGINNING) for t, p in partitions]
    out = []
    for topic, partition in partitions:
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5, cached=False)
            [found] = consumer.offsets_for_times([TopicPartition(topic, partition, since_ms)], timeout=5)
        except KafkaException as exc:
            log.debug("%s[%d]: offsets not available yet (%s)", topic, partition, exc)
            continue
        out.append(TopicPartition(topic, partition, found.offset if found.offset >= 0 else high))
    return out


def existing_partitions(consumer: Consumer, topics: Iterable[str], timeout_s: float = 10) -> list[tuple[str, int]]:
    """(topic, partition) of each of topics that exists now and has a leader for that partition."""
    meta = consumer.list_topics(timeout=timeout_s)
    out: list[tuple[str, int]] = []
    for topic in topics:
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            continue
        out.extend((topic, p) for p, part in sorted(info.partitions.items()) if part.error is None)
    return out


class Follower:
    """Reads topics from the beginning (or from since_ms) and picks up partitions as they appear.

    Topics that do not exist yet are looked for again every refresh_s, so a reader started before
    Debezium or the pipeline created a topic still reads it from its first record.
    """

    def __init__(self, settings: Settings, topics: Sequence[str], *, since_ms: int | None = None,
                 refresh_s: float = 1.0, group: str = "erpsync-reader") -> None:
        self.topics = list(topics)
        self.since_ms = since_ms
        self.refresh_s = refresh_s
        self.consumer = Consumer(client_config(
            settings, **{"group.id": f"{group}-{secrets.token_hex(4)}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"}))
        self.assigned: set[tuple[str, int]] = set()
        self._next_refresh = 0.0

    def refresh(self) -> None:
        """Assign the partitions that appeared since the last look."""
        self._next_refresh = time.monotonic() + self.refresh_s
        try:
            found = existing_partitions(self.consumer, self.topics, timeout_s=5)
        except KafkaException as exc:
            log.debug("topic metadata not available: %s", exc)
            return
        new = [tp for tp in found if tp not in self.assigned]
        if not new:
            return
        positions = start_positions(self.consumer, new, self.since_ms)
        if positions:
            self.consumer.incremental_assign(positions)
            self.assigned.update((tp.topic, tp.partition) for tp in positions)
            log.debug("reading %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in positions))

    def missing(self) -> list[str]:
        """The topics of which no partition is read yet."""
        return [t for t in self.topics if not any(a[0] == t for a in self.assigned)]

    def poll(self, timeout_s: float = 0.5) -> Message | None:
        """The next record, or None (errors such as partition EOF are skipped)."""
        if time.monotonic() >= self._next_refresh:
            self.refresh()
        if not self.assigned:
            time.sleep(min(timeout_s, max(0.0, self._next_refresh - time.monotonic())))
            return None
        msg: Message | None = self.consumer.poll(timeout_s)
        if msg is None or msg.error():
            return None
        return msg

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
