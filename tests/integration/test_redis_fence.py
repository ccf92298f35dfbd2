"""The Redis write fence (Lua, on the real Redis): newer wins, older and repeated writes do not."""

from __future__ import annotations

import redis

from connectors.redis import FENCED_HSET, fence

from .conftest import unique


def test_fence_orders_writes(store: redis.Redis) -> None:
    channel, sku = unique("fence-test"), "SKU-1"
    write = store.register_script(FENCED_HSET)

    def put(ats: int, erp: str, wms: str, version: int) -> int:
        return int(write(keys=[f"ats:{channel}", f"ats-pos:{channel}"],
                         args=[sku, str(ats), fence({"erp": erp, "wms": wms}, version)]))

    try:
        assert put(10, "0001", "0005", 3) == 1
        assert put(11, "0001", "0005", 4) == 1  # same positions (snapshot reads), newer state
        assert put(12, "0001", "0004", 9) == 0  # a position went backwards: an older value
        assert put(13, "0001", "0005", 4) == 0  # a redelivery of what is there
        assert put(14, "0001", "0005", 2) == 0  # older state at the same positions
        assert put(15, "0002", "0005", 1) == 1  # a position moved forward: newer, whatever the version
        assert store.hget(f"ats:{channel}", sku) == b"15"
        store.hset(f"ats-pos:{channel}", sku, "0003|0005||")  # a fence from before versions existed
        assert put(16, "0003", "0005", 1) == 1
        assert put(17, "0003", "0004", 2) == 0
    finally:
        store.delete(f"ats:{channel}", f"ats-pos:{channel}")
