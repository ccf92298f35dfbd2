"""The ERP's order import interface: accepted channel orders into ``erp.order_intake``.

Idempotent on the table's key (channel, external order id): ``ON CONFLICT DO NOTHING``, so a
redelivered or re-submitted order never makes a second row, and never resets a row the ERP
already imported or failed.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from connectors.ops_db import UpsertSink
from erpsync.settings import Settings

INSERT_INTAKE = """
INSERT INTO erp.order_intake (channel, external_order_id, payload)
VALUES (%s, %s, %s::jsonb)
ON CONFLICT (channel, external_order_id) DO NOTHING
"""


def intake_row(value: dict[str, Any]) -> tuple[str, str, str]:
    """(channel, external order id, payload JSON) for an io.erpsync.AcceptedOrder value."""
    return value["channel"], value["external_order_id"], json.dumps(value, sort_keys=True)


def login(settings: Settings) -> psycopg.Connection[Any]:
    """The intake login: it may insert into erp.order_intake, nothing else."""
    erp = settings.erp
    return psycopg.connect(host=erp.host, port=erp.port, dbname=erp.dbname, user=erp.intake_user,
                           password=erp.intake_password.get_secret_value(), connect_timeout=10)


def IntakeWriter(settings: Settings) -> UpsertSink:  # noqa: N802  (reads as the sink it makes)
    return UpsertSink(settings, INSERT_INTAKE, intake_row, login=login, sink="erp")
