"""``erpsync reconcile`` on the command line: its arguments, its help text, its exit status.

Kept apart from ``run`` so that the library call (``reconcile``, used by the demo and the tests)
carries no argument parsing, and the command no reconciliation logic.
"""

from __future__ import annotations

import argparse
import textwrap
from datetime import UTC, datetime
from typing import Any

from erpsync.reconcile.kpis import ACCURACY_DEFINITION
from erpsync.reconcile.report import render
from erpsync.reconcile.run import STEPS, reconcile
from erpsync.settings import Settings


def parse_since(text: str) -> int:
    """--since: epoch milliseconds, or an ISO 8601 time (UTC when it has no offset)."""
    if text.isdigit():
        if len(text) > 15:  # past the year 33658: not a time anyone means (and beyond a bigint as microseconds)
            raise argparse.ArgumentTypeError(f"epoch milliseconds out of range: {text}")
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time (e.g. 2026-11-27T10:00:00Z) or epoch milliseconds, got {text!r}") from exc
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)


DESCRIPTION = f"""\
Read the ERP and the WMS directly and compare them with what channels were told: ATS per SKU and
channel (spec section 5) with Redis ats:<channel> and sync.availability; order status and lines
(spec section 7) with sync.order_status; invoices, freight, credit memos, returns and shipments
with each other. Prints every difference by kind and the KPIs, and saves the run and its findings
in sync.reconciliation_runs and sync.reconciliation_findings.

{textwrap.fill(ACCURACY_DEFINITION + ".", 98)}

Exit status: 0; 1 when --min-accuracy is given and inventory accuracy is below it (or nothing is
in scope); 2 when a system cannot be read.
"""


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``reconcile`` to the ``erpsync`` command line."""
    p = subparsers.add_parser(
        "reconcile", help="compare ERP and WMS (read directly) with what channels were told; KPIs",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skus", metavar="PATTERN", help="SQL LIKE pattern on SKUs, e.g. 'SKU-T123%%' (default: all)")
    p.add_argument("--orders", metavar="PATTERN", help="SQL LIKE pattern on external order ids (default: all)")
    p.add_argument("--since", type=parse_since, metavar="ISO|MS",
                   help="sync latency over rows written since then (default: every row in scope)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--min-accuracy", type=float, metavar="PCT",
                   help="exit 1 when inventory accuracy is below PCT percent (default: no threshold, exit 0)")
    p.add_argument("--topics", action="store_true",
                   help="also compare the newest records of availability.<channel> and order-status.<channel>")
    p.add_argument("--topic-records", type=int, default=100_000, metavar="N",
                   help="with --topics: how many of the newest records of each topic to read (default 100000)")
    p.add_argument("--no-store", action="store_true", help="do not save the run in the ops database")
    p.set_defaults(func=lambda settings, args: main(args, settings))


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run the command: 0 ok, 1 inventory accuracy below --min-accuracy (a system that cannot be read raises)."""
    # A system that cannot be read raises: the command line reports it in one line (exit 3).
    from erpsync.progress import track  # noqa: PLC0415

    steps = [s for s in STEPS if (args.topics or s != "reading the channel topics")
             and (not args.no_store or s != "storing the run")]
    with track("reconcile", total=len(steps), unit="steps", interval_s=settings.cli.progress_interval_s) as t:
        report = reconcile(settings, sku_like=args.skus, order_like=args.orders, since_ms=args.since,
                           min_accuracy_pct=args.min_accuracy, store=not args.no_store,
                           topic_records=args.topic_records if args.topics else None,
                           on_step=lambda name: t.update(completed=steps.index(name), note=f"{name} ..."))
        t.update(completed=len(steps), note="")
    print(report.to_json() if args.json else render(report).rstrip("\n"))
    return 0 if report.passed else 1
