"""The workload: one run's roles played together around the pipeline on the local stack.

``Workload`` is what callers use (``erpsync simulate``, the demo, the tests, the benchmarks). It owns
the run's ``Scenario`` and ``Manifest`` and one object per role: the ERP and WMS as owners of master
data (``seeding``), the storefronts (``storefront``), the ERP's order import (``erp_import``), the WMS
(``wms``) and the ERP's back office (``finance``), which reach the ERP and the WMS through one
``Systems``. It plays them in rounds (``step``) while the storefronts send the orders (``run``), and
keeps the manifest's stages up to date with the ERP (``observe``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from erpsync.channels import configured_channels
from erpsync.settings import Settings
from erpsync.simulate.erp_import import ErpImporter
from erpsync.simulate.finance import Finance
from erpsync.simulate.manifest import STAGES, Manifest
from erpsync.simulate.scenario import OrderPlan, Scenario
from erpsync.simulate.seeding import MasterData
from erpsync.simulate.storefront import Storefront
from erpsync.simulate.systems import Systems
from erpsync.simulate.wms import Warehouse
from state.channels import Channel

log = logging.getLogger(__name__)

_STAGE_OF_STATUS = {"allocated": "allocated", "shipped": "shipped", "invoiced": "invoiced", "closed": "invoiced"}


class Workload:
    """Plays the channels, the ERP and the WMS around the pipeline on the local stack.

    Keyword arguments go to ``Scenario``. Connects lazily with the ERP and WMS admin logins of
    ``settings``; use it as a context manager (or call ``close``). Step methods return how many
    orders they looked at.
    """

    def __init__(self, settings: Settings, seed: int, tag: str, *, start: datetime | None = None,
                 fault_rate: float = 0.15, downstream_fault_rate: float = 0.05, return_rate: float = 0.1,
                 import_failure_rate: float = 0.0, max_orders: int = 1000,
                 channels: Sequence[Channel] | None = None) -> None:
        self.settings = settings
        self.scenario = Scenario(seed, tag, start=start, fault_rate=fault_rate,
                                 downstream_fault_rate=downstream_fault_rate, return_rate=return_rate,
                                 import_failure_rate=import_failure_rate, max_orders=max_orders,
                                 channels=channels or configured_channels(settings))
        self.manifest = self.scenario.manifest
        self.tag = tag
        self.systems = Systems(settings, tag)
        self.master_data = MasterData(self.systems, self.scenario)
        self.storefront = Storefront(settings, tag, self.manifest)
        self.importer = ErpImporter(self.systems, self.scenario)
        self.warehouse = Warehouse(self.systems, self.scenario)
        self.finance = Finance(self.systems, self.scenario)

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.storefront.close()
        self.systems.close()

    def touch(self) -> None:
        """One source change now (an item's updated_at), so that event time moves on.

        SLA deadlines and intake TTLs that fell due while the sources were quiet then fire without
        waiting for business to resume.
        """
        self.systems.erp().execute("UPDATE erp.items SET updated_at = now() WHERE sku = %s",
                                   (self.scenario.catalog.items[0].sku,))

    # -- the roles, one step each

    def seed(self) -> None:
        """Insert the catalog into the ERP and the WMS (``MasterData.seed``). Idempotent."""
        self.master_data.seed()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the pipeline has read the seeded catalog (``MasterData.wait_ready``); False after timeout_s."""
        return self.master_data.wait_ready(timeout_s)

    def orders(self, n: int, rate: float | None = None, *,
               on_idle: Callable[[], None] | None = None, idle_every_s: float = 0.2) -> list[OrderPlan]:
        """Plan the next n orders and produce them (duplicates twice) to ``commerce.orders``.

        At most `rate` messages/s (None: as fast as possible); while waiting for its slot it calls
        on_idle every idle_every_s.
        """
        plans = self.scenario.plan_orders(n)
        self.storefront.send(Scenario.submissions(plans), rate, on_idle, idle_every_s)
        return plans

    def erp_import(self) -> int:
        """The ERP imports this run's pending intakes (``ErpImporter.import_pending``)."""
        return self.importer.import_pending()

    def wms_step(self) -> int:
        """Move each of this run's ERP orders one WMS stage on; the ERP follows (``Warehouse.step``)."""
        return self.warehouse.step()

    def erp_finance(self) -> int:
        """Invoices, credit memos and returns of this run's orders (``Finance.step``)."""
        return self.finance.step()

    # -- the whole run

    def _advance(self, key: str, stage: str) -> None:
        current = self.manifest.stages.get(key)
        if current is None or (current in STAGES and STAGES.index(stage) > STAGES.index(current)):
            self.manifest.stages[key] = stage

    def observe(self) -> None:
        """Bring the manifest's stages and ERP order ids up to date with the ERP."""
        rows = self.systems.erp().execute(
            "SELECT i.channel, i.external_order_id, i.status, o.order_id, o.status FROM erp.order_intake i"
            " LEFT JOIN erp.sales_orders o USING (channel, external_order_id)"
            " WHERE i.external_order_id LIKE %s", (self.systems.like(),)).fetchall()
        for channel, external_id, intake_status, order_id, status in rows:
            key = f"{channel}:{external_id}"
            if intake_status == "failed":
                self.manifest.stages[key] = "failed"
            elif order_id is not None:
                self.manifest.erp_order_ids[key] = order_id
                self._advance(key, _STAGE_OF_STATUS.get(status, "imported"))

    def step(self) -> None:
        """One round of the ERP and the WMS: invoice/return/credit, fulfil, import; then observe.

        Latest stage first, so an order moves on at most one stage a round, as in a real ERP and
        WMS where import, allocation and shipping are separate moments (and channels see each).
        """
        self.erp_finance()
        self.wms_step()
        self.erp_import()
        self.observe()

    def finished(self, key: str) -> bool:
        """Whether the workload has nothing left to do for an order."""
        stage = self.manifest.stages.get(key)
        if stage != "invoiced":
            return stage == "failed"
        plan = self.scenario.plans.get(key)
        if plan is None or plan.return_plan is None:
            return True
        return key in self.manifest.credits or (key in self.manifest.returns and plan.downstream == "credit_pending")

    def drained(self) -> bool:
        """Every order expected to be accepted, and every order that reached the ERP, is finished."""
        keys = set(self.manifest.expected_accepted()) | set(self.manifest.stages)
        return all(self.finished(k) for k in keys)

    def run(self, orders: int, rate: float | None = 10.0, *, until_drained: bool = True, timeout_s: float = 300.0,
            poll_s: float = 0.2, ready_timeout_s: float = 30.0,
            on_step: Callable[[], None] | None = None) -> Manifest:
        """Seed, send `orders` orders at `rate`/s while playing the ERP and the WMS, return the manifest.

        After the last order it keeps playing them every poll_s until every order is finished
        (``manifest.drained``) or timeout_s has passed. on_step (progress) is called after every
        round of the ERP and the WMS.
        """
        def step() -> None:
            self.step()
            if on_step is not None:
                on_step()

        self.seed()
        if not self.wait_ready(ready_timeout_s):
            log.warning("the pipeline shows no availability for the seeded SKUs after %.0fs; sending anyway",
                        ready_timeout_s)
        self.orders(orders, rate, on_idle=step, idle_every_s=poll_s)
        log.info("sent %d orders (%d messages)", len(self.manifest.orders), self.manifest.submitted)
        deadline = time.monotonic() + timeout_s
        last_log = 0.0
        while until_drained:
            step()
            self.manifest.drained = self.drained()
            if self.manifest.drained or time.monotonic() >= deadline:
                break
            if time.monotonic() - last_log >= 5:
                log.info("progress: %s", {s: self.manifest.reached(s) for s in STAGES})
                last_log = time.monotonic()
            time.sleep(poll_s)
        return self.manifest
