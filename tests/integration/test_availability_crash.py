"""kill -9 of `erpsync run` mid-stream: it resumes from its snapshot, Redis never goes backwards, and
the final Redis and topic values equal ATS recomputed from the sources.

Its own module, so that no other pipeline runs meanwhile (module-scoped pipelines of other modules
are stopped by then).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import redis

from connectors.redis import client as redis_client
from erpsync.settings import Settings
from schemas.registry import SchemaRegistry

from .conftest import Pipeline, read_canonical, unique
from .truth import latest_on_topics, redis_values, seed, truth, wait_for_truth


def test_kill_9_and_restart_never_goes_backwards(settings: Settings, erp, wms, store: redis.Redis,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    skus = [unique("SKU-CRASH") for _ in range(4)]
    started_ms = int(time.time() * 1000) - 5000
    seed(erp, wms, skus)
    run = Pipeline(tmp_path, ERPSYNC_FLOWS__SNAPSHOT_INTERVAL_S="1").start()
    seen: list[dict[Any, Any]] = []
    stop = threading.Event()

    def watch() -> None:  # what a storefront would have read, every 20 ms
        client = redis_client(settings, reader=True)
        while not stop.is_set():
            seen.append(redis_values(client, skus))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(3)  # a few snapshots (every 1 s) cover the seeded rows before the crash
    try:
        with wms.cursor() as cur:
            for n in range(1, 121):  # on_hand only grows, so ATS may never go down
                cur.execute("UPDATE inventory_balances SET on_hand = on_hand + 1 WHERE sku = %s AND "
                            "location = 'DC-EAST'", (skus[n % len(skus)],))
                time.sleep(0.03)
                if n == 50:
                    run.kill9()
                    run.start()  # same recovery directory: resumes from the last snapshot
        wait_for_truth(settings, store, skus)
    finally:
        stop.set()
        watcher.join()
        run.stop()
    final = truth(settings, skus)
    assert latest_on_topics(settings, set(skus), started_ms, final) == final
    for key in seen[0]:
        values = [s[key] for s in seen if s[key] is not None]
        assert values == sorted(values), f"{key} went backwards: {values}"
    assert len(seen) > 50
    # Resumed, not reprocessed from scratch: the seeded items were canonicalized once, before the crash.
    items = read_canonical(settings, SchemaRegistry.load(), ["canonical.item"], {json.dumps([s]) for s in skus},
                           expected=2 * len(skus), timeout_s=5)
    assert sorted(k for _, k, _ in items) == sorted(json.dumps([s]) for s in skus)
