"""The Redis write fence (Lua, on the real Redis): a newer version wins; older and repeated writes do not."""

from __future__ import annotations

import redis

from connectors.redis import FENCED_HSET

from .conftest import unique


def test_fence_orders_writes(store: redis.Redis) -> None:
    channel, sku = unique("fence-test"), "SKU-1"
    write = store.register_script(FENCED_HSET)

    def put(ats: int, version: int) -> int:
        return int(write(keys=[f"ats:{channel}", f"ats-version:{channel}"], args=[sku, str(ats), str(version)]))

    try:
        assert put(10, 3) == 1
        assert put(11, 4) == 1  # newer
        assert put(12, 2) == 0  # an older value (a redelivery after a restart, a fresh pipeline re-reading)
        assert put(13, 4) == 0  # a repeat of what is there
        assert store.hget(f"ats:{channel}", sku) == b"11"
        assert put(14, 5) == 1
        assert store.hget(f"ats:{channel}", sku) == b"14" and store.hget(f"ats-version:{channel}", sku) == b"5"
    finally:
        store.delete(f"ats:{channel}", f"ats-version:{channel}")
