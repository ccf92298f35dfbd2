"""Redis, what storefronts read: ``HGET ats:<channel> <sku>`` -> ATS as a base-10 integer string.

Each write is one Lua script call, atomic, fenced by source position: the fence is the newest
position per source system the value reflects plus the SKU state's version, kept beside it in
``ats-pos:<channel>``. A value is written only if neither the ERP's nor the WMS's position went
backwards and either one moved forward or the version grew (inputs at equal positions, e.g.
snapshot reads, intake reservations, or read out of order across topics), so a replayed or
redelivered update can never overwrite a newer one. The commerce and clock positions are stored for
explanation but do not fence: they are not deterministic across a restart.
"""

from __future__ import annotations

from typing import Any

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from erpsync import telemetry
from erpsync.settings import Settings
from state.ats import POSITION_SYSTEMS
from state.records import Emit

FENCED_HSET = """
-- ARGV[3] is the fence: '<erp>|<wms>|<commerce>|<clock>|<version>' (positions fixed-width per system)
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  local new_parts = {}
  for part in string.gmatch(ARGV[3] .. '|', '([^|]*)|') do new_parts[#new_parts + 1] = part end
  local old_parts = {}
  for part in string.gmatch(old .. '|', '([^|]*)|') do old_parts[#old_parts + 1] = part end
  local forward = false
  -- only the source systems' positions (erp, wms) fence: they are deterministic. The commerce and
  -- clock parts (the intake desk's sequence, the event second of a TTL release) are informational:
  -- after a restart they may be assigned in another order, and must not freeze a SKU's value.
  for i = 1, 2 do
    local before = old_parts[i] or ''
    if new_parts[i] < before then return 0 end
    if new_parts[i] > before then forward = true end
  end
  -- the version is the last part; a fence written before versions existed counts as version 0
  local new_version = tonumber(new_parts[#new_parts]) or 0
  local old_version = tonumber(old_parts[#new_parts] or '') or 0
  if not forward and new_version <= old_version then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""


def fence(positions: dict[str, str], version: int) -> str:
    """The fence string: positions of every system in a fixed order ('' for none yet), then the version."""
    return "|".join([*(positions.get(system, "") for system in POSITION_SYSTEMS), str(version)])


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

    The pipeline's user by default (writes ``ats:*``, ``ats-pos:*``); ``reader=True`` is the
    storefronts' read-only user (``ats:*`` and ``price:*`` only), which is what tests and
    demos that play a storefront use.
    """
    r = settings.redis
    user, password = (r.reader_user, r.reader_password) if reader else (r.user, r.password)
    pool = redis.ConnectionPool(connection_class=_Connection, host=r.host, port=r.port, username=user,
                                password=password.get_secret_value(), socket_timeout=socket_timeout,
                                socket_connect_timeout=socket_timeout)
    return redis.Redis.from_pool(pool)


class AtsSink(DynamicSink[Emit]):
    """Writes Availability records' ATS to ``ats:<channel>``, batched in one pipeline per batch."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AtsPartition:
        return _AtsPartition(client(self.settings))


class _AtsPartition(StatelessSinkPartition[Emit]):
    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self.script: Any = conn.register_script(FENCED_HSET)

    def write_batch(self, items: list[Emit]) -> None:
        pipe = self.conn.pipeline(transaction=False)
        for e in items:
            v = e.value
            self.script(keys=[f"ats:{v['channel']}", f"ats-pos:{v['channel']}"],
                        args=[v["sku"], str(v["ats"]), fence(v["positions"], v["version"])], client=pipe)
        pipe.execute()  # raises on any error: the batch is retried from the last snapshot
        telemetry.sink_latency("redis", "ats", (e.value["event_time_ms"] for e in items))

    def close(self) -> None:
        self.conn.close()
