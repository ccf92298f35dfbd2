"""``erpsync reconcile``: the systems of record against what channels were told (spec section 9).

Reads the ERP and the WMS directly (SQL, each in one read-only snapshot), recomputes what every
channel should have been told with the spec's formulas, written here again on purpose (nothing of
the pipeline's code is reused, so a bug there cannot hide itself), and compares:

- inventory: ATS per SKU and channel (spec section 5) against Redis ``HGET ats:<channel> <sku>``
  (what storefronts read) and ``sync.availability`` in the operations database;
- orders: status and per-line quantities (spec section 7) against ``sync.order_status``, plus
  the discrepancies the ERP and WMS rows show by themselves (invoice, freight, credit, short or
  over shipment, ERP/WMS status disagreement), so every injected fault is named even if the
  pipeline missed it.

The compacted ``availability.<channel>`` and ``order-status.<channel>`` topics are compared only
with ``--topics``, and then only over the last N records of each topic: on a long-lived stack they
hold millions of records, and the ops database row is written by the same pipeline under the same
fence as the topic record, so the ops database comparison already covers what was published.

One module per stage; the pure ones (no client library, unit-tested without services) are marked:

- ``facts``: what is read from each system, as plain data (pure);
- ``sources``: reading the ERP and the WMS;
- ``published``: reading what channels were told (ops database, Redis, push acknowledgements, topics);
- ``scope``: the ``LIKE`` patterns of a run in each store's form (pure);
- ``recompute``: the truth, recomputed with the spec's formulas (pure);
- ``compare``: the truth against what channels were told (pure);
- ``discrepancies``: an order's ERP and WMS rows against each other (pure);
- ``findings``: the finding every comparison yields, and what each kind means (pure);
- ``kpis``: the KPIs' definitions and arithmetic (pure);
- ``report``: the report, as text (``render``) and JSON (``Report.to_json``) (pure);
- ``run``: the orchestration (``reconcile``) and storing the run;
- ``command``: the ``erpsync reconcile`` command line.

Every run and its findings are stored in ``sync.reconciliation_runs`` / ``_findings``.

Reading while the pipeline is busy reports in-flight updates as differences (the sources are read
before what was published); reconcile a quiet system, or read repeated findings across runs.
"""

from erpsync.reconcile.command import add_parser, main, parse_since
from erpsync.reconcile.compare import compare_inventory, compare_orders, compare_topics, status_differences
from erpsync.reconcile.discrepancies import order_discrepancies
from erpsync.reconcile.facts import ErpOrder, InventoryFacts, Line, PendingIntake, Shipment
from erpsync.reconcile.findings import Finding
from erpsync.reconcile.kpis import Kpis, Latency, meets, order_exception_rate, percent
from erpsync.reconcile.recompute import RECEIVED, Ats, expected_status, recompute_ats
from erpsync.reconcile.report import Report, render
from erpsync.reconcile.run import reconcile
from erpsync.reconcile.scope import like_glob, like_regex

__all__ = [
    "RECEIVED", "Ats", "ErpOrder", "Finding", "InventoryFacts", "Kpis", "Latency", "Line", "PendingIntake", "Report",
    "Shipment", "add_parser", "compare_inventory", "compare_orders", "compare_topics", "expected_status", "like_glob",
    "like_regex", "main", "meets", "order_discrepancies", "order_exception_rate", "parse_since", "percent",
    "recompute_ats", "reconcile", "render", "status_differences",
]
