"""The ERP and the WMS as the workload reaches them: its admin logins, connected on first use.

Every role works through one ``Systems``: the ERP connection (autocommit; a transaction where a step
needs one), the WMS connection with ``wms_tx`` (one transaction per step), the sequence every id the
workload allocates comes from, and the run's pattern of external order ids; each role is a ``Role``
over that ``Systems`` and the run's ``Scenario``. The database drivers are imported on first use,
so the pure modules (the scenario, its unit tests) need none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from erpsync.settings import Settings
from erpsync.simulate.scenario import Scenario

# Ids the workload allocates (orders, invoices, credit memos, shipments) come from one sequence that
# starts above 32 bits: far from hand-written test ids, and a truncation to int32 anywhere shows.
ID_SEQUENCE = "erp.erpsync_sim_id"
ID_START = 5_000_000_000


class Systems:
    """The ERP and WMS connections of one run (``tag``), shared by its roles; ``close`` ends them."""

    def __init__(self, settings: Settings, tag: str) -> None:
        self.settings = settings
        self.tag = tag
        self._erp_conn: Any = None
        self._wms_conn: Any = None

    def close(self) -> None:
        for conn in (self._erp_conn, self._wms_conn):
            if conn is not None:
                conn.close()
        self._erp_conn = self._wms_conn = None

    def reconnect(self) -> None:
        """Forget connections an outage broke; the next step connects again."""
        for conn in (self._erp_conn, self._wms_conn):
            if conn is not None:
                with contextlib.suppress(Exception):  # already broken by the outage
                    conn.close()
        self._erp_conn = self._wms_conn = None

    def erp(self) -> Any:
        """The ERP, autocommit (a step opens a transaction where it needs one); creates the id sequence."""
        if self._erp_conn is None:
            import psycopg  # noqa: PLC0415 - the pure Scenario must not need database drivers

            e = self.settings.erp
            self._erp_conn = psycopg.connect(host=e.host, port=e.port, dbname=e.dbname, user=e.user,
                                             password=e.password.get_secret_value(), autocommit=True)
            self._erp_conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {ID_SEQUENCE} START WITH {ID_START}")
        return self._erp_conn

    def wms(self) -> Any:
        """The WMS; use ``wms_tx`` for a transaction."""
        if self._wms_conn is None:
            import pymysql  # noqa: PLC0415

            w = self.settings.wms
            self._wms_conn = pymysql.connect(host=w.host, port=w.port, user=w.user,
                                             password=w.password.get_secret_value(), database=w.dbname,
                                             autocommit=False)
        return self._wms_conn

    @contextmanager
    def wms_tx(self) -> Iterator[Any]:
        """A WMS cursor inside one transaction: committed on success, rolled back on any error."""
        conn = self.wms()
        conn.begin()
        try:
            with conn.cursor() as cur:
                yield cur
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def next_id(self) -> int:
        """The next id of the workload's sequence (orders, shipments, invoices, credit memos)."""
        row = self.erp().execute(f"SELECT nextval('{ID_SEQUENCE}')").fetchone()
        return int(row[0])

    def like(self) -> str:
        """The external order ids of the run, as a SQL LIKE pattern."""
        return f"{self.tag}-%"  # the tag is letters and digits only: no LIKE wildcards inside

    def erp_status(self, order_id: int, old: str, new: str) -> None:
        """Move an ERP order from status old to new (nothing when it is in another status)."""
        self.erp().execute("UPDATE erp.sales_orders SET status = %s, updated_at = now()"
                           " WHERE order_id = %s AND status = %s", (new, order_id, old))


class Role:
    """A part the workload plays on the ERP and the WMS (import, WMS, back office, master data), for one run."""

    def __init__(self, systems: Systems, scenario: Scenario) -> None:
        self.systems = systems
        self.scenario = scenario
        self.manifest = scenario.manifest
