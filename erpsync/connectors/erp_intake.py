"""The ERP's order import interface: accepted channel orders into ``erp.order_intake``.

Idempotent on the table's key (channel, external order id): ``ON CONFLICT DO NOTHING``, so a
redelivered or re-submitted order never makes a second row, and never resets a row the ERP
already imported or failed.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from erpsync import telemetry
from erpsync.records import Emit
from erpsync.settings import Settings

INSERT_INTAKE = """
INSERT INTO erp.order_intake (channel, external_order_id, payload)
VALUES (%s, %s, %s::jsonb)
ON CONFLICT (channel, external_order_id) DO NOTHING
"""


def intake_row(value: dict[str, Any]) -> tuple[str, str, str]:
    """(channel, external order id, payload JSON) for an io.erpsync.AcceptedOrder value."""
    return value["channel"], value["external_order_id"], json.dumps(value, sort_keys=True)


class IntakeWriter(DynamicSink[Emit]):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _IntakePartition:
        erp = self.settings.erp  # the intake login may insert into erp.order_intake, nothing else
        return _IntakePartition(psycopg.connect(
            host=erp.host, port=erp.port, dbname=erp.dbname, user=erp.intake_user,
            password=erp.intake_password.get_secret_value(), connect_timeout=10))


class _IntakePartition(StatelessSinkPartition[Emit]):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def write_batch(self, items: list[Emit]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(INSERT_INTAKE, [intake_row(e.value) for e in items])
        self.conn.commit()  # before the batch is acknowledged, so before the next snapshot
        telemetry.sink_latency("erp", "erp.order_intake", (e.value["accepted_at_ms"] for e in items))

    def close(self) -> None:
        self.conn.close()
