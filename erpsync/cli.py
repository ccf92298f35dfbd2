"""The ``erpsync`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import redis

from erpsync import kcat, reconcile, stack
from erpsync.settings import Settings, load_settings
from erpsync.stack.components import all_components, load_connector_configs
from erpsync.stack.connect import ConnectClient
from erpsync.stack.process import tail
from schemas.compat import check_directory, release
from schemas.registry import RELEASED_DIR, SCHEMA_DIR, SchemaRegistry, released_versions

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
            if "subjects" in row:
                print(f"  subjects registered: {row['subjects'] if row['subjects'] is not None else '?'}")
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
    client = ConnectClient.of(settings.connect)
    for connector in load_connector_configs():
        client.apply(connector)
        client.wait_running(connector["name"], timeout_s=settings.stack.start_timeout_s)
        print(f"connector {connector['name']}: RUNNING")
    return 0


def _connectors_status(settings: Settings, args: argparse.Namespace) -> int:
    states = ConnectClient.of(settings.connect).states()
    for name, st in states.items():
        print(f"connector {name}: {st['connector']}, tasks {', '.join(st['tasks']) or 'none'}")
    ok = all(st["connector"] == "RUNNING" and st["tasks"] and set(st["tasks"]) == {"RUNNING"}
             for st in states.values())
    return 0 if ok else 1


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from erpsync import runner  # noqa: PLC0415 - bytewax is only imported for commands that run flows

    runner.run(settings, SchemaRegistry.load())
    return 0


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from erpsync import runner  # noqa: PLC0415

    counts = runner.replay(settings, SchemaRegistry.load(), args.input, args.output, workers=args.workers)
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
    try:
        problems = check_directory(args.schemas, args.released)
    except (ValueError, OSError) as exc:
        print(f"erpsync schemas check: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"incompatible: {problem}")
    releases = released_versions(args.released)
    against = f"release {releases[-1][0]} (history {', '.join(v for v, _ in releases)})" if releases else "no release"
    print(f"schemas: compatible with {against}, each in its declared mode" if not problems else
          f"schemas: {len(problems)} incompatible change(s) against {against}")
    return 1 if problems else 0


def _schemas_release(settings: Settings, args: argparse.Namespace) -> int:
    try:
        label = release(args.schemas, args.released)
    except (ValueError, OSError) as exc:
        print(f"erpsync schemas release: {exc}", file=sys.stderr)
        return 1
    print(f"schemas: released {args.schemas} as {args.released / label}; commit it")
    return 0


def _schemas_register(settings: Settings, args: argparse.Namespace) -> int:
    from confluent_kafka.schema_registry.error import SchemaRegistryError  # noqa: PLC0415

    from erpsync.channels import load_channels  # noqa: PLC0415
    from erpsync.subjects import register  # noqa: PLC0415

    url = args.url or settings.kafka.schema_registry_url
    if not url:
        print("erpsync schemas register: no registry URL (--url or ERPSYNC_KAFKA__SCHEMA_REGISTRY_URL)",
              file=sys.stderr)
        return 2
    try:
        ids = register(url, SchemaRegistry.load(), load_channels())
    except (SchemaRegistryError, OSError, ValueError) as exc:
        print(f"erpsync schemas register: {url}: {exc}", file=sys.stderr)
        return 1
    for subject, schema_id in ids.items():
        print(f"{subject}: id {schema_id}")
    print(f"schemas: {len(ids)} subjects registered at {url}")
    return 0


def _mappings_check(settings: Settings, args: argparse.Namespace) -> int:
    from erpsync.mappings import connector_systems, live_catalog  # noqa: PLC0415
    from erpsync.stack.components import REFERENCE_DIR  # noqa: PLC0415
    from schemas.mapping import MAPPINGS_DIR  # noqa: PLC0415
    from schemas.mapping_check import check_static, check_tables, reference_catalog  # noqa: PLC0415

    directory = args.mappings or settings.flows.mappings_dir or MAPPINGS_DIR
    for what, path in (("mappings", directory), ("schemas", args.schemas)):
        if not path.is_dir():
            print(f"erpsync mappings check: no {what} directory {path}", file=sys.stderr)
            return 2
    try:
        registry = SchemaRegistry.load(args.schemas, released=None)
    except (ValueError, KeyError, OSError) as exc:
        print(f"erpsync mappings check: the schemas in {args.schemas}: {exc}", file=sys.stderr)
        return 2
    connectors = connector_systems()
    problems = check_static(registry, directory, set(connectors) if connectors is not None else None)
    if args.live:
        systems = {m.get("system") for m in _mapping_docs(directory)} - {None}
        catalog = live_catalog(settings, [str(s) for s in systems])
    else:
        paths = [p for ref in (args.reference or [REFERENCE_DIR])
                 for p in (sorted(ref.glob("*.sql")) if ref.is_dir() else [ref])]
        if not paths or not all(p.is_file() for p in paths):
            print(f"erpsync mappings check: no DDL files in {args.reference or [REFERENCE_DIR]}; "
                  "pass --reference FILE_OR_DIR or --live", file=sys.stderr)
            return 2
        catalog = reference_catalog(paths)
    problems += check_tables(registry, directory, catalog)
    for problem in problems:
        print(f"{directory / problem.file}: {problem.key}: {problem.message}")
    files = len([p for p in directory.glob("*.toml")])
    print(f"mappings: {files} files in {directory} checked against {args.schemas} and {catalog.source}: "
          + ("ok" if not problems else f"{len(problems)} problem(s)"))
    if catalog.missing:
        return 3  # a live system could not be read: not the mappings' fault
    return 1 if problems else 0


def _mapping_docs(directory: Path) -> list[dict[str, object]]:
    import tomllib  # noqa: PLC0415

    docs = []
    for path in sorted(directory.glob("*.toml")):
        try:
            docs.append(tomllib.loads(path.read_text()))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue  # reported by the check
    return docs


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
    lg.add_argument("component", nargs="?",
                    choices=["redis", "postgres", "ops-db", "mariadb", "kafka", "connect", "registry"])
    lg.add_argument("-n", "--lines", type=int, default=40)
    lg.set_defaults(func=_stack_logs)

    conn_p = sub.add_parser("connectors", help="Debezium connectors on a Kafka Connect cluster")
    conn_sub = conn_p.add_subparsers(dest="action", required=True)
    conn_sub.add_parser("apply", help="create or update every debezium/*.json connector (PUT, idempotent)"
                        ).set_defaults(func=_connectors_apply)
    conn_sub.add_parser("status", help="connector and task states").set_defaults(func=_connectors_status)

    kc = sub.add_parser("kcat", help="kcat logged in to the pipeline's Kafka (e.g. `erpsync kcat -C -t sync.dlq -e`)")
    kc.add_argument("kcat_args", nargs=argparse.REMAINDER, help="kcat's own arguments")
    kc.set_defaults(func=lambda settings, args: kcat.run(settings, args.kcat_args))
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
    for action, func, text in (
        ("check", _schemas_check, "fail when a schema breaks its compatibility mode against the released history"),
        ("release", _schemas_release, "check, then copy the current schemas into the next released/vN"),
    ):
        sp = sc_sub.add_parser(action, help=text)
        sp.add_argument("--schemas", type=Path, default=SCHEMA_DIR, help="schema directory (default: the contract)")
        sp.add_argument("--released", type=Path, default=RELEASED_DIR, help="release history (default: the package's)")
        sp.set_defaults(func=func)
    rg = sc_sub.add_parser("register", help="register every schema under its topic's subject (<topic>-value) "
                           "with its compatibility mode; idempotent")
    rg.add_argument("--url", help="Confluent-compatible registry API (default: ERPSYNC_KAFKA__SCHEMA_REGISTRY_URL)")
    rg.set_defaults(func=_schemas_register)
    mp = sub.add_parser("mappings", help="the source-table mappings")
    mp_sub = mp.add_subparsers(dest="action", required=True)
    mc = mp_sub.add_parser("check", help="validate every mapping: keys, owner, fields and types against the Avro "
                           "schemas, source tables and columns against DDL (or --live); exit 1 on a problem")
    mc.add_argument("--mappings", type=Path, help="mapping directory (default: ERPSYNC_FLOWS__MAPPINGS_DIR or the "
                    "packaged mappings)")
    mc.add_argument("--schemas", type=Path, default=SCHEMA_DIR, help="schema directory (default: the contract)")
    mc.add_argument("--reference", type=Path, action="append", help="DDL file or directory of *.sql (repeatable; "
                    "default: reference/)")
    mc.add_argument("--live", action="store_true", help="check the source tables in the live databases' "
                    "information_schema (as each system's capture login) instead of DDL")
    mc.set_defaults(func=_mappings_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["kcat"]:  # everything after it is kcat's, options included
        return kcat.run(load_settings(), argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = load_settings()
    try:
        code: int = args.func(settings, args)
    except (stack.StackError, redis.AuthenticationError) as exc:  # one actionable line, no traceback
        print(f"erpsync: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
