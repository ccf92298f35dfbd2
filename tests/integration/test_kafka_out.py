"""The transactional Kafka output (connectors.kafka_out) when the broker refuses a record mid-epoch.

A topic's limit lowered while the pipeline runs: the broker refuses a record the size check let
through, and the transaction can only be aborted; librdkafka then refuses every later produce()
of the epoch ("Erroneous state"). The epoch must still commit its other records, once, and the
refused one must reach the DLQ with the broker's reason: before, the next produce() raised out of
the sink and bytewax panicked (a crash on every hostile record).
"""

from __future__ import annotations

import secrets

from confluent_kafka.admin import AdminClient

from connectors import kafka
from connectors.kafka_out import ExactlyOnceSink, Outgoing, TopicLayout, part_of
from erpsync.settings import Settings
from state.records import DLQ_TOPIC

from .conftest import read_to_end, unique
from .faults import set_limit

PARTS = 1000  # the test's part is not one a pipeline on the stack runs (transactional ids erpsync-out-0, -1)


def test_a_record_refused_mid_epoch_goes_to_the_dlq_and_the_rest_commits(settings: Settings) -> None:
    topic = unique("test-refused")
    while part_of(topic, 0, PARTS) < 10:
        topic = unique("test-refused")
    kafka.ensure_topics(settings, [topic], partitions=1)
    layout = TopicLayout(settings).load([topic])  # the limit as the pipeline read it at start (1 MB)
    admin = AdminClient(settings.kafka.client_config())
    set_limit(admin, topic, "100000")
    part = ExactlyOnceSink(settings, layout, PARTS).build_part("test", str(part_of(topic, 0, PARTS)), None)
    big = Outgoing(topic, 0, b"big", secrets.token_bytes(300_000))
    small = [Outgoing(topic, 0, f"small-{n}".encode(), b"x" * 100) for n in range(5)]
    try:
        part.write_batch([small[0], big])
        part.producer.poll(5)  # the broker's answer arrives: the transaction is now abortable only
        part.write_batch(small[1:])  # raised "Erroneous state" out of the sink before
        part.snapshot()  # the epoch's commit
    finally:
        part.close()
    keys = [m.key() for m in read_to_end(settings, [topic])]  # read_committed: the librdkafka default
    assert keys == [o.key for o in small]
    reasons = [dict(m.headers() or []) for m in read_to_end(settings, [DLQ_TOPIC]) if m.key() == b"big"]
    assert any(h.get("topic") == topic.encode() and b"refused" in h.get("reason", b"") for h in reasons), reasons
