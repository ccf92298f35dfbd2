"""``erpsync simulate``: a reference workload that plays the channels, the ERP and the WMS around the pipeline.

Everything the workload decides comes from one ``random.Random(seed)``: the catalog it seeds, the
channel orders it sends to ``commerce.orders`` and the faults it injects, each order carrying at most
one. Every id is derived from a run ``tag`` so runs never collide. Two parts:

- ``Scenario`` is pure: the catalog and the planned orders (with their faults) of a run, and the
  ``Manifest`` of what was planned and done. Same seed, tag and start: same catalog, same orders.
- ``Workload`` does the I/O: seeds the ERP and WMS, produces the orders, then plays the ERP's order
  import, the WMS (allocate, pick, ship) and ERP finance (invoices, credit memos) for the orders the
  pipeline wrote into ``erp.order_intake``. Every step acts only on this run's rows that are in the
  state it expects, so calling it again (or after a crash) is safe.

Normal orders are clean under every rule of spec sections 6 and 9: their prices are the price list's,
their quantities fit every channel's ATS (counting every earlier accepted order), the WMS freight
cost of their shipments adds up to the order's freight, and their invoice equals the order total.

One module per part, the pure ones first:

- ``catalog``: the master data and stock of a run;
- ``scenario``: the planned orders, each with its faults decided;
- ``faults``: the faults a run injects, and how an amount is made wrong;
- ``manifest``: what a run planned, submitted and did (the ground truth);
- ``money``: amounts in whole cents, as the ERP keeps them;
- ``systems``: the ERP and WMS connections every role shares;
- ``seeding``: the ERP and the WMS as owners of master data (seed, wait until the pipeline has it);
- ``storefront``: the channels sending their orders to ``commerce.orders``;
- ``erp_import``: the ERP importing ``erp.order_intake`` rows as sales orders;
- ``wms``: the WMS allocating, picking and shipping, the ERP following;
- ``finance``: the ERP's back office (invoices, returns, credit memos);
- ``workload``: ``Workload``, the roles played together in rounds.
"""

from erpsync.simulate.erp_import import parse_intake_payload
from erpsync.simulate.faults import DOWNSTREAM_FAULTS, DUPLICATE, INTAKE_FAULTS
from erpsync.simulate.manifest import Manifest
from erpsync.simulate.money import split_cents
from erpsync.simulate.scenario import OrderPlan, Scenario, StockExhausted
from erpsync.simulate.workload import Workload

__all__ = [
    "DOWNSTREAM_FAULTS", "DUPLICATE", "INTAKE_FAULTS", "Manifest", "OrderPlan", "Scenario", "StockExhausted",
    "Workload", "parse_intake_payload", "split_cents",
]
