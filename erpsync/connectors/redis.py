"""Redis, what storefronts read: ``HGET ats:<channel> <sku>`` -> ATS as a base-10 integer string.

Each write is one Lua script call, atomic, fenced by source position: the fence is the newest
position per source system the value reflects, kept beside it in ``ats-pos:<channel>``. A value is
written only if no system's position went backwards and at least one moved forward, so a replayed,
redelivered or reordered update can never overwrite a newer one.
"""

from __future__ import annotations

from typing import Any

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from erpsync.records import Emit
from erpsync.settings import Settings
from erpsync.state.ats import POSITION_SYSTEMS

FENCED_HSET = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  local newer = false
  local i = 1
  local new_parts = {}
  for part in string.gmatch(ARGV[3] .. '|', '([^|]*)|') do new_parts[#new_parts + 1] = part end
  for part in string.gmatch(old .. '|', '([^|]*)|') do
    local candidate = new_parts[i] or ''
    if candidate < part then return 0 end
    if candidate > part then newer = true end
    i = i + 1
  end
  if not newer then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""


def fence(positions: dict[str, str]) -> str:
    """The fence string: positions of every system, in a fixed order ('' for none yet)."""
    return "|".join(positions.get(system, "") for system in POSITION_SYSTEMS)


def client(settings: Settings) -> redis.Redis:
    return redis.Redis(host=settings.redis.host, port=settings.redis.port, socket_timeout=10)


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
                        args=[v["sku"], str(v["ats"]), fence(v["positions"])], client=pipe)
        pipe.execute()  # raises on any error: the batch is retried from the last snapshot

    def close(self) -> None:
        self.conn.close()
