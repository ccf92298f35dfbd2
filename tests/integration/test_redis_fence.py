"""The Redis write fence (Lua, on the real Redis): a newer version wins; older and repeated writes do not."""

from __future__ import annotations

import redis

from connectors.redis import FENCED_HSET
from connectors.redis import client as redis_client
from erpsync.settings import Settings
from erpsync.stack.components import all_components

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


def test_fenced_writes_survive_a_redis_restart(store: redis.Redis, settings: Settings) -> None:
    """Redis replays its append-only file on start; the script's writes are in it as MULTI/EXEC.

    Redis checks a replayed EXEC against the default user's ACL (redis/redis#14541): with a default
    user that may run nothing, every fenced write was silently dropped at the restart.
    """
    channel = unique("restart-test")
    write = store.register_script(FENCED_HSET)
    values = {f"SKU-{n}": n * 10 for n in range(1, 6)}
    for sku, ats in values.items():
        write(keys=[f"ats:{channel}", f"ats-version:{channel}"], args=[sku, str(ats), "1"])
    redis_server = next(c for c in all_components(settings) if c.name == "redis")
    try:
        assert redis_server.stop()
        redis_server.start()
        after = redis_client(settings)
        assert {k.decode(): int(v) for k, v in after.hgetall(f"ats:{channel}").items()} == values
        assert set(after.hgetall(f"ats-version:{channel}").values()) == {b"1"}
    finally:
        redis_server.start()
        redis_client(settings).delete(f"ats:{channel}", f"ats-version:{channel}")
