"""Redis, what storefronts read: ``HGET ats:<channel> <sku>`` -> ATS as a base-10 integer string.

Each write is one Lua script call, atomic, fenced by the value's ``version``: the number of inputs
the SKU's availability state has applied. The pipeline applies every SKU's inputs in event-time
order, so versions are the same in every run and only grow; a replayed, redelivered or re-read
(fresh pipeline) update can never overwrite a newer value. The fence is kept beside the value in
``ats-version:<channel>``.
"""

from __future__ import annotations

from typing import Any

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.ops_db import channel_sku
from connectors.resilience import Rejects, guarded
from erpsync import telemetry
from erpsync.settings import Settings
from state.records import Emit, newest_versions

FENCED_HSET = """
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if tonumber(ARGV[3]) <= old then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""


class _Connection(redis.Connection):
    """A connection whose authentication failure is one line naming the user and the server."""

    def on_connect_check_health(self, check_health: bool = True) -> None:
        try:
            super().on_connect_check_health(check_health)
        except redis.AuthenticationError as exc:
            raise redis.AuthenticationError(
                f"redis: authentication as user {self.username!r} at {self.host}:{self.port} failed ({exc}); "
                "check ERPSYNC_REDIS__USER/PASSWORD (storefront: ERPSYNC_REDIS__READER_USER/READER_PASSWORD)"
            ) from None


def client(settings: Settings, *, reader: bool = False, socket_timeout: float = 10) -> redis.Redis:
    """An authenticated Redis client: every one of erpsync's goes through here.

    The pipeline's user by default (writes ``ats:*``, ``ats-version:*``); ``reader=True`` is the
    storefronts' read-only user (``ats:*`` and ``price:*`` only), which is what tests and
    demos that play a storefront use.
    """
    r = settings.redis
    user, password = (r.reader_user, r.reader_password) if reader else (r.user, r.password)
    pool = redis.ConnectionPool(connection_class=_Connection, host=r.host, port=r.port, username=user,
                                password=password.get_secret_value(), socket_timeout=socket_timeout,
                                socket_connect_timeout=socket_timeout)
    return redis.Redis.from_pool(pool)


SEED_KEY = "erpsync:seeded"  # + ":<process id>": present while Redis holds that process's outputs (`seeded`)


def mark_seeded(settings: Settings, token: str, process_id: int = 0) -> None:
    """Record that Redis holds the outputs of pipeline process `process_id` (`token`: its recovery store).

    One marker per process of a cluster: each process holds (and re-seeds) the state of its own keys.
    """
    client(settings).set(f"{SEED_KEY}:{process_id}", token)


def seeded(settings: Settings, process_id: int = 0) -> str | None:
    """The token of the pipeline process whose outputs Redis holds; None after Redis lost its data (or never had it)."""
    value = client(settings, socket_timeout=5).get(f"{SEED_KEY}:{process_id}")
    return None if value is None else value.decode() if isinstance(value, bytes) else str(value)


class AtsSink(DynamicSink[Emit]):
    """Writes Availability records' ATS to ``ats:<channel>``, batched in one pipeline per batch.

    While Redis is unreachable the write waits (``guarded``), and the worker with it; a command
    Redis refuses sends its record to the DLQ.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AtsPartition:
        return _AtsPartition(self.settings, client(self.settings))


class _AtsPartition(StatelessSinkPartition[Emit]):
    def __init__(self, settings: Settings, conn: redis.Redis) -> None:
        self.settings, self.conn = settings, conn
        self.script: Any = conn.register_script(FENCED_HSET)

    def _write(self, items: list[Emit]) -> list[Any]:
        pipe = self.conn.pipeline(transaction=False)
        for e in items:
            v = e.value
            self.script(keys=[f"ats:{v['channel']}", f"ats-version:{v['channel']}"],
                        args=[v["sku"], str(v["ats"]), str(v["version"])], client=pipe)
        results: list[Any] = pipe.execute(raise_on_error=False)
        for r in results:  # connection trouble is for `guarded`; a refused command is the record's
            if isinstance(r, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError):
                raise r
        return results

    def write_batch(self, items: list[Emit]) -> None:
        newest = newest_versions(items, channel_sku)  # the fence would keep only these
        results = guarded("redis", lambda: self._write(newest))
        refused = [(e, r) for e, r in zip(newest, results, strict=True) if isinstance(r, Exception)]
        Rejects.send(self.settings, "redis", refused)
        telemetry.sink_latency("redis", "ats", (e.value["event_time_ms"] for e in items))

    def close(self) -> None:
        self.conn.close()
