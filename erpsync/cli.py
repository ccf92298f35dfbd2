"""The ``erpsync`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from erpsync import reconcile, stack
from erpsync.settings import Settings, load_settings
from erpsync.stack.components import all_components, load_connector_configs
from erpsync.stack.connect import ConnectClient
from erpsync.stack.process import tail
from schemas.compat import check_directory
from schemas.registry import RELEASED_DIR, SCHEMA_DIR, SchemaRegistry

log = logging.getLogger("erpsync")


def _stack_up(settings: Settings, args: argparse.Namespace) -> int:
    timings = stack.up(settings)
    total = sum(timings.values())
    print("stack up: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + f" (total {total:.1f}s)")
    return 0


def _stack_down(settings: Settings, args: argparse.Namespace) -> int:
    stopped = stack.down(settings)
    print("stack down: stopped " + (", ".join(stopped) if stopped else "nothing (nothing was running)"))
    return 0


def _stack_status(settings: Settings, args: argparse.Namespace) -> int:
    rows = stack.status(settings)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['component']:<9} {row['state']:<10} pid={row['pid'] or '-':<8} "
                  f"{row['endpoint']:<24} log={row['log']}")
            for name, st in row.get("connectors", {}).items():
                print(f"  connector {name}: {st['connector']}, tasks {', '.join(st['tasks']) or 'none'}")
            for slot, lag in row.get("replication_slots", {}).items():
                print(f"  replication slot {slot}: lag {lag if lag is not None else '?'} bytes")
    return 0 if all(r["state"] == "healthy" for r in rows) else 1


def _stack_logs(settings: Settings, args: argparse.Namespace) -> int:
    for component in all_components(settings):
        if args.component in (None, component.name):
            print(f"==> {component.log_file} <==")
            print(tail(component.log_file, args.lines))
    return 0


def _connectors_apply(settings: Settings, args: argparse.Namespace) -> int:
    client = ConnectClient(settings.connect.url)
    for connector in load_connector_configs():
        client.apply(connector)
        client.wait_running(connector["name"], timeout_s=settings.stack.start_timeout_s)
        print(f"connector {connector['name']}: RUNNING")
    return 0


def _connectors_status(settings: Settings, args: argparse.Namespace) -> int:
    states = ConnectClient(settings.connect.url).states()
    for name, st in states.items():
        print(f"connector {name}: {st['connector']}, tasks {', '.join(st['tasks']) or 'none'}")
    ok = all(st["connector"] == "RUNNING" and st["tasks"] and set(st["tasks"]) == {"RUNNING"}
             for st in states.values())
    return 0 if ok else 1


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from erpsync import runner  # noqa: PLC0415 - bytewax is only imported for commands that run flows

    try:
        runner.run(settings, SchemaRegistry.load())
    except ValueError as exc:  # a channel file or its push credentials: one line, no traceback
        print(f"erpsync run: {exc}", file=sys.stderr)
        return 2
    return 0


def _channels_status(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from connectors.http_channels import status_rows  # noqa: PLC0415
    from erpsync.channels import load_channels  # noqa: PLC0415

    rows = status_rows(settings)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    pushing = {c.id for c in load_channels(settings.flows.channels_dir) if c.outputs.push}
    table = Table(title="push channels (sync.channel_status, refreshed by `erpsync run`)")
    for col in ("channel", "breaker", "pending", "in flight", "delivered", "last delivered position",
                "latency p50/p99 ms", "requests/s", "errors by kind", "acked keys", "rejected keys",
                "open exceptions", "updated"):
        table.add_column(col, overflow="fold")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    for r in rows:
        pos = r["last_position"] or {}
        where = (f"{pos['kind']} {pos['key']} erp {pos['erp'] or '-'} wms {pos['wms'] or '-'} v{pos['version']}"
                 if pos else "-")
        errors = ", ".join(f"{k} {n}" for k, n in sorted((r["errors"] or {}).items())) or "none"
        table.add_row(r["channel"], r["breaker"], str(r["pending"]), str(r["in_flight"]), str(r["delivered"]), where,
                      f"{ms(r['latency_p50_ms'])}/{ms(r['latency_p99_ms'])}", f"{r['requests_per_s']:.1f}", errors,
                      str(r["acknowledged_keys"]), str(r["rejected_keys"]), str(r["open_exceptions"]),
                      f"{r['age_s']:.0f}s ago")
    Console().print(table)
    missing = sorted(pushing - {r["channel"] for r in rows})
    if missing:
        print(f"no status yet (is `erpsync run` running?): {', '.join(missing)}")
    return 0


def _channels_replay(settings: Settings, args: argparse.Namespace) -> int:
    from connectors.http_channels import replay_rejected  # noqa: PLC0415

    try:
        keys = replay_rejected(settings, args.id)
    except ValueError as exc:
        print(f"erpsync channels replay: {exc}", file=sys.stderr)
        return 1
    print(f"{args.id}: {keys} key(s) released; the running pipeline sends their latest values at its next rescan")
    return 0


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from erpsync import runner  # noqa: PLC0415

    counts = runner.replay(SchemaRegistry.load(), args.input, args.output, workers=args.workers,
                           slas=settings.flows.slas(), mappings_dir=settings.flows.mappings_dir)
    produced = sum(n for k, n in counts.items() if not k.startswith("ignored:"))
    print(f"replay: {produced} records written to {args.output}")
    for name, n in sorted(counts.items()):
        print(f"  {name}: {n}")
    return 0


def _capture_fixtures(settings: Settings, args: argparse.Namespace) -> int:
    from erpsync.fixtures import capture  # noqa: PLC0415

    counts = capture(settings, args.output)
    print(f"captured into {args.output}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _schemas_check(settings: Settings, args: argparse.Namespace) -> int:
    problems = check_directory(SCHEMA_DIR, RELEASED_DIR)
    for problem in problems:
        print(f"incompatible: {problem}")
    print("schemas: " + ("backward compatible with the last release" if not problems else
                         f"{len(problems)} incompatible change(s)"))
    return 1 if problems else 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from erpsync.demo import run_demo  # noqa: PLC0415

    return run_demo(settings, SchemaRegistry.load(), orders=args.orders, rate=args.rate)


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    import secrets  # noqa: PLC0415

    from erpsync.simulate import Workload  # noqa: PLC0415

    tag = args.tag or f"SIM{secrets.token_hex(3).upper()}"
    try:
        work = Workload(settings, args.seed, tag, fault_rate=args.fault_rate, max_orders=max(1000, args.orders))
    except ValueError as exc:
        print(f"erpsync simulate: {exc}", file=sys.stderr)
        return 2
    with work:
        manifest = work.run(args.orders, args.rate or None, timeout_s=args.timeout)
    if args.manifest:
        args.manifest.write_text(manifest.to_json())
    s = manifest.summary()
    print(f"simulate {tag} (seed {args.seed}): {s['orders']} orders, {s['submitted']} messages to commerce.orders")
    print("  by channel: " + ", ".join(f"{k} {v}" for k, v in s["by_channel"].items()))
    print("  intake faults: " + (", ".join(f"{k} {v}" for k, v in s["intake_faults"].items()) or "none"))
    print("  downstream faults: " + (", ".join(f"{k} {v}" for k, v in s["downstream_faults"].items()) or "none"))
    print(f"  imported {s['imported']}, failed {s['failed']}, allocated {s['allocated']}, shipped {s['shipped']},"
          f" invoiced {s['invoiced']}; returns {s['returns']}, credits {s['credits']}")
    print("  drained" if manifest.drained else f"  not drained within {args.timeout:.0f}s (is `erpsync run` running?)")
    return 0 if manifest.drained else 1


def _exceptions_list(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from erpsync.ops import queue  # noqa: PLC0415

    rows = queue.list_exceptions(settings, kind=args.kind, state=args.state,
                                 since=None if args.since is None else queue.since_ms(args.since), limit=args.limit)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    table = Table(title=f"exceptions ({len(rows)} shown, newest first)")
    for col in ("id", "kind", "state", "business key", "occurrences", "last seen (UTC)", "reason"):
        table.add_column(col, overflow="fold")
    for r in rows:
        last = datetime.fromtimestamp(r["last_seen_ms"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(r["id"], r["kind"], r["state"], r["business_key"], str(r["occurrences"]), last, r["reason"])
    Console().print(table)
    return 0


def _exceptions_show(settings: Settings, args: argparse.Namespace) -> int:
    from erpsync.ops import queue  # noqa: PLC0415

    row = queue.show(settings, args.id)
    if row is None:
        print(f"erpsync exceptions show: no exception {args.id}", file=sys.stderr)
        return 1
    print(json.dumps(row, default=str, indent=2))
    return 0


def _exceptions_resolve(settings: Settings, args: argparse.Namespace) -> int:
    from erpsync.ops import queue  # noqa: PLC0415

    if not queue.resolve(settings, args.id, args.note):
        print(f"erpsync exceptions resolve: no exception {args.id}", file=sys.stderr)
        return 1
    print(f"resolved {args.id}")
    return 0


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    from erpsync.ops import queue  # noqa: PLC0415

    r = queue.replay_dead_letters(settings, reason=args.reason, topic=args.topic)
    print(f"dead letters: {r.read} read, {r.matched} matching, {r.already_replayed} already replayed, "
          f"{r.reinjected} re-injected into sync.dlq-replay (the running pipeline picks them up)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="erpsync", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    stack_p = sub.add_parser(
        "stack", help="manage the local stack (Kafka, Connect, PostgreSQL, MariaDB, Redis)"
    )
    stack_sub = stack_p.add_subparsers(dest="action", required=True)
    stack_sub.add_parser("up", help="install what is missing, start and provision everything (idempotent)"
                         ).set_defaults(func=_stack_up)
    stack_sub.add_parser("down", help="stop everything; data is kept").set_defaults(func=_stack_down)
    st = stack_sub.add_parser("status", help="components, connector tasks and replication slot lag")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_stack_status)
    lg = stack_sub.add_parser("logs", help="the last lines of each component's log")
    lg.add_argument("component", nargs="?", choices=["redis", "postgres", "mariadb", "kafka", "connect"])
    lg.add_argument("-n", "--lines", type=int, default=40)
    lg.set_defaults(func=_stack_logs)

    conn_p = sub.add_parser("connectors", help="Debezium connectors on a Kafka Connect cluster")
    conn_sub = conn_p.add_subparsers(dest="action", required=True)
    conn_sub.add_parser("apply", help="create or update every debezium/*.json connector (PUT, idempotent)"
                        ).set_defaults(func=_connectors_apply)
    conn_sub.add_parser("status", help="connector and task states").set_defaults(func=_connectors_status)

    sub.add_parser("run", help="run the dataflows against Kafka (resumes from recovery snapshots)"
                   ).set_defaults(func=_run)
    ex_p = sub.add_parser("exceptions", help="the exception queue (ops database)")
    ex_sub = ex_p.add_subparsers(dest="action", required=True)
    ls = ex_sub.add_parser("list", help="exceptions, newest first")
    ls.add_argument("--kind", help="e.g. oversold, price_mismatch, dead_letter")
    ls.add_argument("--state", choices=["open", "resolved", "replayed"])
    ls.add_argument("--since", help="last seen at or after: ISO-8601 time or epoch milliseconds")
    ls.add_argument("--limit", type=int, default=200)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_exceptions_list)
    sh = ex_sub.add_parser("show", help="one exception, every field")
    sh.add_argument("id")
    sh.set_defaults(func=_exceptions_show)
    rs = ex_sub.add_parser("resolve", help="mark an exception resolved, with a note")
    rs.add_argument("id")
    rs.add_argument("--note", required=True)
    rs.set_defaults(func=_exceptions_resolve)
    dlq_p = sub.add_parser("dlq", help="the dead-letter queue (sync.dlq)")
    dlq_sub = dlq_p.add_subparsers(dest="action", required=True)
    dr = dlq_sub.add_parser("replay", help="re-inject dead letters (e.g. after a mapping fix); idempotent")
    dr.add_argument("--reason", help="only those whose reason contains this text")
    dr.add_argument("--topic", help="only those from this original topic")
    dr.set_defaults(func=_dlq_replay)

    ch_p = sub.add_parser("channels", help="HTTP push channels: delivery status, replay of rejections")
    ch_sub = ch_p.add_subparsers(dest="action", required=True)
    cs = ch_sub.add_parser("status", help="breaker, pending keys, last delivered position, latency, errors")
    cs.add_argument("--json", action="store_true")
    cs.set_defaults(func=_channels_status)
    cr = ch_sub.add_parser("replay", help="send again what a channel_rejected exception held back (after a fix)")
    cr.add_argument("id", help="the channel_rejected exception id")
    cr.set_defaults(func=_channels_replay)

    reconcile.add_parser(sub)

    rp = sub.add_parser("replay", help="run the whole pipeline over a kcat -J dump, no services needed")
    rp.add_argument("--input", type=Path, required=True, help="kcat -C -J output, one record a line")
    rp.add_argument("--output", type=Path, required=True, help="JSON lines {topic, key, value}")
    rp.add_argument("--workers", type=int, default=1)
    rp.set_defaults(func=_replay)
    cf = sub.add_parser("capture-fixtures", help="script ERP/WMS changes on the local stack, dump the envelopes")
    cf.add_argument("--output", type=Path, default=Path("tests/fixtures/debezium"))
    cf.set_defaults(func=_capture_fixtures)
    dm = sub.add_parser("demo", help="show the pipeline at work on the local stack (after `stack up`)")
    dm.add_argument("--orders", type=int, default=40, help="channel orders the workload sends (default 40)")
    dm.add_argument("--rate", type=float, default=4.0, help="orders per second (default 4)")
    dm.set_defaults(func=_demo)
    sim = sub.add_parser("simulate", help="play channels, ERP and WMS around a running pipeline (local stack)")
    sim.add_argument("--orders", type=int, default=50, help="channel orders to send")
    sim.add_argument("--rate", type=float, default=5.0, help="orders per second (0: as fast as possible)")
    sim.add_argument("--seed", type=int, default=1, help="same seed, same orders and faults")
    sim.add_argument("--tag", help="prefix of every id of the run, 2-16 letters/digits (default: random)")
    sim.add_argument("--fault-rate", type=float, default=0.15, help="share of orders with an intake fault")
    sim.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every order to finish")
    sim.add_argument("--manifest", type=Path, help="write the manifest (ground truth) here as JSON")
    sim.set_defaults(func=_simulate)
    sc = sub.add_parser("schemas", help="the Avro contract")
    sc_sub = sc.add_subparsers(dest="action", required=True)
    sc_sub.add_parser("check", help="fail when a schema is not backward compatible with the last release"
                      ).set_defaults(func=_schemas_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = load_settings()
    try:
        code: int = args.func(settings, args)
    except stack.StackError as exc:
        print(f"erpsync: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
