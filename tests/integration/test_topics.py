"""Topics the pipeline creates at start are read on every partition, however busy the broker is.

`erpsync run` creates its topics in a few calls (the mapped and output topics, then the channel
orders and re-injected dead letters, then the transaction topics, then the channel topics) and then
asks the cluster for every topic's partitions. A broker answers metadata from its own cache, which
the controller updates after it has answered the creation: a topic created a moment before could
be missing from the answer, and the pipeline then read only partition 0 of it (the fallback for a
topic it did not see). With `commerce.orders` created in a later call, `make demo` left the channel
orders of partitions 1 to 5 unread. `ensure_topics` now returns only once the cluster's metadata
shows what it created.
"""

from __future__ import annotations

import uuid

from confluent_kafka.admin import AdminClient

from connectors import kafka
from erpsync.settings import Settings


def test_topics_created_in_successive_calls_are_listed_with_every_partition_at_once(settings: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    first = [f"test-topics-{tag}.bulk{i}" for i in range(40)]  # keeps the controller busy, as a fresh start does
    later = [f"test-topics-{tag}.later{i}" for i in range(3)]
    try:
        kafka.ensure_topics(settings, first, partitions=6)
        kafka.ensure_topics(settings, later, {"cleanup.policy": "compact"}, partitions=6)
        seen = kafka.topic_partitions(settings)
        missing = {t: seen.get(t) for t in first + later if seen.get(t) != list(range(6))}
        assert not missing, f"not (fully) listed right after creation: {missing}"
    finally:
        admin = AdminClient(settings.kafka.client_config())
        for future in admin.delete_topics(first + later, operation_timeout=30).values():
            future.result()
