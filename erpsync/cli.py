"""The ``erpsync`` command line.

Errors are one line on stderr naming what is wrong, and the exit status says what kind of
problem it is (``erpsync.errors``: 2 usage, 3 a system unreachable, 4 data or configuration).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError
from pydantic_settings import SettingsError

from erpsync import __version__, errors, kcat, reconcile, stack
from erpsync.channels import ChannelConfigError, configured_channels, describe_validation_error
from erpsync.errors import DataError, Unreachable, UsageError
from erpsync.logs import KAFKA_CLIENT_LOGGER
from erpsync.progress import track
from erpsync.settings import Settings, load_settings
from erpsync.stack.components import all_components, load_connector_configs
from erpsync.stack.connect import ConnectClient
from erpsync.stack.process import port_open, tail
from schemas.compat import check_directory, release
from schemas.registry import RELEASED_DIR, SCHEMA_DIR, SchemaRegistry, released_versions
from state.records import DLQ_TOPIC

log = logging.getLogger("erpsync")

# The systems a command talks to, checked before it starts so that one that is down is named at once.
_SYSTEMS: dict[str, tuple[str, Callable[[Settings], tuple[str, int]], str]] = {
    "kafka": ("Kafka", lambda s: (s.kafka.host, s.kafka.port), "ERPSYNC_KAFKA__HOST/PORT"),
    "connect": ("Kafka Connect", lambda s: (s.connect.host, s.connect.port), "ERPSYNC_CONNECT__HOST/PORT"),
    "erp": ("the ERP database (PostgreSQL)", lambda s: (s.erp.host, s.erp.port), "ERPSYNC_ERP__HOST/PORT"),
    "ops": ("the ops database (PostgreSQL)", lambda s: (s.ops.host, s.ops.port), "ERPSYNC_OPS__HOST/PORT"),
    "wms": ("the WMS database (MariaDB)", lambda s: (s.wms.host, s.wms.port), "ERPSYNC_WMS__HOST/PORT"),
    "redis": ("Redis", lambda s: (s.redis.host, s.redis.port), "ERPSYNC_REDIS__HOST/PORT"),
}


def _needs(settings: Settings, *systems: str) -> None:
    """Raise Unreachable naming the first of systems that accepts no connection."""
    for name in systems:
        label, address, variables = _SYSTEMS[name]
        host, port = address(settings)
        if not port_open(host, port, timeout=2.0):
            raise Unreachable(f"{label} at {host}:{port} is unreachable; start the local stack (`erpsync stack up`)"
                              f" or point {variables} at yours")


def _channels(settings: Settings) -> None:
    """Check the channel definitions before a command that uses them does any work."""
    try:
        configured_channels(settings)
    except ChannelConfigError as exc:
        raise DataError(str(exc)) from exc


def _stack_up(settings: Settings, args: argparse.Namespace) -> int:
    steps = ["install", *(c.name for c in all_components(settings)), "migrations"]
    with track("stack up", total=len(steps), unit="steps", interval_s=settings.cli.progress_interval_s) as t:
        def on_step(name: str) -> None:
            t.update(completed=steps.index(name) if name in steps else None, note=f"{name} ...")

        timings = stack.up(settings, on_step=on_step)
        t.update(completed=len(steps), note="")
    total = sum(timings.values())
    print("stack up: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + f" (total {total:.1f}s)")
    return 0


def _stack_down(settings: Settings, args: argparse.Namespace) -> int:
    stopped = stack.down(settings)
    print("stack down: stopped " + (", ".join(stopped) if stopped else "nothing (nothing was running)"))
    return 0


def _stack_status(settings: Settings, args: argparse.Namespace) -> int:
    rows = stack.status(settings)
    pipeline = stack.pipeline_health(settings)
    if args.json:
        print(json.dumps(rows if pipeline is None else [*rows, {"component": "pipeline", **pipeline}], indent=2))
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
        if pipeline is not None:  # informational: the pipeline is not part of the stack
            down = {n: s for n, s in pipeline["sinks"].items() if not s["up"]}
            print(f"{'pipeline':<9} {'waiting' if down else 'running':<10} pid={pipeline['pid']:<8} "
                  f"recovery {settings.recovery_dir}")
            for name, sink in sorted(pipeline["sinks"].items()):
                since = datetime.fromtimestamp(sink["since_ms"] / 1000, UTC).strftime("%H:%M:%S")
                state = "up" if sink["up"] else f"unavailable since {since} UTC ({sink['error']}); retrying"
                print(f"  sink {name}: {state}" + (f", {sink['rejected']} record(s) refused (in the DLQ)"
                                                   if sink["rejected"] else ""))
    return 0 if all(r["state"] == "healthy" for r in rows) else 1


def _stack_logs(settings: Settings, args: argparse.Namespace) -> int:
    for component in all_components(settings):
        if args.component in (None, component.name):
            print(f"==> {component.log_file} <==")
            print(tail(component.log_file, args.lines))
    return 0


def _connectors_apply(settings: Settings, args: argparse.Namespace) -> int:
    _needs(settings, "connect")
    client = ConnectClient.of(settings.connect)
    for connector in load_connector_configs():
        client.apply(connector)
        client.wait_running(connector["name"], timeout_s=settings.stack.start_timeout_s)
        print(f"connector {connector['name']}: RUNNING")
    return 0


def _connectors_status(settings: Settings, args: argparse.Namespace) -> int:
    _needs(settings, "connect")
    states = ConnectClient.of(settings.connect).states()
    for name, st in states.items():
        print(f"connector {name}: {st['connector']}, tasks {', '.join(st['tasks']) or 'none'}")
    ok = all(st["connector"] == "RUNNING" and st["tasks"] and set(st["tasks"]) == {"RUNNING"}
             for st in states.values())
    return 0 if ok else 1


def _with_cluster(settings: Settings, args: argparse.Namespace) -> Settings:
    """The settings with --process-id/--addresses applied (they override ERPSYNC_FLOWS__...)."""
    update: dict[str, object] = {}
    if args.process_id is not None:
        update["process_id"] = args.process_id
    if args.addresses is not None:
        update["addresses"] = tuple(a.strip() for a in args.addresses.split(",") if a.strip())
    settings = settings.model_copy(update={"flows": settings.flows.model_copy(update=update)}) if update else settings
    from erpsync.cluster import Cluster  # noqa: PLC0415

    try:
        Cluster.of(settings)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return settings


def _local_cluster(command: str, args: argparse.Namespace, extra: list[str]) -> int:
    """`--processes N`: N local processes of this command (erpsync.cluster.LocalCluster)."""
    from erpsync.cluster import LocalCluster, child_argv, child_env  # noqa: PLC0415

    argv = child_argv([*(["-v"] if getattr(args, "verbose", False) else []), command, *extra])
    return LocalCluster(argv, args.processes, child_env(), restart=command == "run").run()


def _run(settings: Settings, args: argparse.Namespace) -> int:
    _channels(settings)
    _needs(settings, "kafka", "redis", "ops", "erp")
    if args.processes > 1:
        if args.process_id is not None or args.addresses is not None:
            raise UsageError("--processes starts a local cluster; --process-id/--addresses join one: not both")
        return _local_cluster("run", args, [])
    settings = _with_cluster(settings, args)
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
    _check_replay_paths(args.input, args.output)
    _channels(settings)
    if args.processes > 1:
        extra = ["--input", str(args.input), "--output", str(args.output), "--workers", str(args.workers),
                 *(["--fail-on-dead-letters"] if args.fail_on_dead_letters else [])]
        return _local_cluster("replay", args, extra)
    settings = _with_cluster(settings, args)
    from erpsync import runner  # noqa: PLC0415

    total = count_lines(args.input)
    with track("replay", total=total, unit="records", interval_s=settings.cli.progress_interval_s) as t:
        counts = runner.replay(settings, SchemaRegistry.load(), args.input, args.output, workers=args.workers,
                               channels=configured_channels(settings), on_input=t.advance)
    if not counts and settings.flows.addresses:
        return 0  # a process of a cluster that did not hold the output: the one that did reports
    print(replay_summary(counts, args.output, total))
    dead = counts.get(DLQ_TOPIC, 0)
    if args.fail_on_dead_letters and dead:
        raise DataError(f"{dead} record(s) dead-lettered (--fail-on-dead-letters); reasons above, records in "
                        f"{args.output} (topic {DLQ_TOPIC})")
    return 0


def _check_replay_paths(source: Path, target: Path) -> None:
    """Usage errors before any work: a missing input, an output that is the input (it would loop forever)."""
    if not source.exists():
        raise UsageError(f"--input {source}: no such file")
    if not source.is_file():
        raise UsageError(f"--input {source}: not a regular file")
    if not os.access(source, os.R_OK):
        raise UsageError(f"--input {source}: not readable (permission denied)")
    if target.exists() or target.is_symlink():
        if target.is_dir():
            raise UsageError(f"--output {target}: is a directory; name a file")
        if target.exists() and os.path.samefile(source, target):
            raise UsageError(f"--output {target} is the same file as --input {source}: the replay would read "
                             "its own output forever; write somewhere else")
        if not os.access(target, os.W_OK):
            raise UsageError(f"--output {target}: not writable (permission denied)")
    elif not target.parent.is_dir():
        raise UsageError(f"--output {target}: directory {target.parent} does not exist")
    elif not os.access(target.parent, os.W_OK):
        raise UsageError(f"--output {target}: directory {target.parent} is not writable")


def count_lines(path: Path) -> int:
    """Lines in a file (a last line without a newline counts), read in 1 MiB chunks: about 1 s per GB."""
    lines, last = 0, b"\n"
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def dead_letter_reasons(output: Path) -> Counter[str]:
    """How many dead letters of a replay output had each reason."""
    reasons: Counter[str] = Counter()
    prefix = json.dumps({"topic": DLQ_TOPIC}, separators=(",", ":"))[:-1] + ","
    with output.open() as fh:
        for line in fh:
            if line.startswith(prefix):
                reasons[json.loads(line).get("headers", {}).get("reason", "?")] += 1
    return reasons


def replay_summary(counts: Counter[str], output: Path, records_in: int, *, top: int = 10) -> str:
    """What a replay wrote, per output topic, and why records were dead-lettered or ignored."""
    written = {k: n for k, n in counts.items() if not k.startswith("ignored:")}
    ignored = {k.removeprefix("ignored:"): n for k, n in counts.items() if k.startswith("ignored:")}
    lines = [f"replay: {records_in:,} input records, {sum(written.values()):,} output records written to {output}"]
    width = max((len(t) for t in written), default=0)
    lines += [f"  {topic:<{width}}  {n:>9,}" for topic, n in sorted(written.items())]
    dead = written.get(DLQ_TOPIC, 0)
    if dead:
        reasons = dead_letter_reasons(output)
        lines.append(f"dead letters: {dead:,}, {len(reasons)} distinct reason(s)")
        lines += [f"  {n:>9,}  {reason}" for reason, n in reasons.most_common(top)]
        if len(reasons) > top:
            lines.append(f"  ... and {len(reasons) - top} more reason(s) (see the {DLQ_TOPIC} lines of {output})")
    else:
        lines.append("dead letters: none")
    if ignored:
        lines.append("ignored (counted, not written): " + ", ".join(f"{r} {n:,}" for r, n in sorted(ignored.items())))
    return "\n".join(lines)


def _capture_fixtures(settings: Settings, args: argparse.Namespace) -> int:
    if args.output.exists() and not args.output.is_dir():
        raise UsageError(f"--output {args.output}: not a directory")
    _needs(settings, "erp", "wms", "kafka")
    from erpsync.fixtures import STEPS, capture  # noqa: PLC0415

    with track("capture-fixtures", total=len(STEPS), unit="steps",
               interval_s=settings.cli.progress_interval_s) as t:
        counts = capture(settings, args.output,
                         on_step=lambda name: t.update(completed=STEPS.index(name), note=f"{name} ..."))
        t.update(completed=len(STEPS), note="")
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


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    _channels(settings)
    _needs(settings, "erp", "wms", "ops", "redis", *(["kafka"] if args.topics else []))
    return reconcile.main(args, settings)


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    _channels(settings)
    _needs(settings, "erp", "ops", "wms", "redis", "kafka", "connect")
    from erpsync.demo import run_demo  # noqa: PLC0415

    return run_demo(settings, SchemaRegistry.load(), orders=args.orders, rate=args.rate)


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    import secrets  # noqa: PLC0415

    from erpsync.simulate import Workload  # noqa: PLC0415

    if args.manifest and not args.manifest.parent.is_dir():
        raise UsageError(f"--manifest {args.manifest}: directory {args.manifest.parent} does not exist")
    _channels(settings)
    tag = args.tag or f"SIM{secrets.token_hex(3).upper()}"
    try:
        work = Workload(settings, args.seed, tag, fault_rate=args.fault_rate, max_orders=max(1000, args.orders))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    _needs(settings, "erp", "wms", "kafka", "redis")
    with work, track("simulate", total=args.orders, unit="orders finished",
                     interval_s=settings.cli.progress_interval_s) as t:
        manifest = work.manifest

        def on_step() -> None:
            rejected = manifest.expected_rejections()
            done = sum(1 for k in manifest.orders if work.finished(k) or (k in rejected and k not in manifest.stages))
            t.update(completed=done, note=f"{manifest.submitted} messages sent")

        manifest = work.run(args.orders, args.rate or None, timeout_s=args.timeout, on_step=on_step)
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

    _needs(settings, "ops")
    rows = queue.list_exceptions(settings, kind=args.kind, state=args.state, since=args.since, limit=args.limit)
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

    _needs(settings, "ops")
    row = queue.show(settings, args.id)
    if row is None:
        print(f"erpsync exceptions show: no exception {args.id}", file=sys.stderr)
        return 1
    print(json.dumps(row, default=str, indent=2))
    return 0


def _exceptions_resolve(settings: Settings, args: argparse.Namespace) -> int:
    from erpsync.ops import queue  # noqa: PLC0415

    _needs(settings, "ops")
    if not queue.resolve(settings, args.id, args.note):
        print(f"erpsync exceptions resolve: no exception {args.id}", file=sys.stderr)
        return 1
    print(f"resolved {args.id}")
    return 0


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    from erpsync.ops import queue  # noqa: PLC0415

    _needs(settings, "kafka", "ops")
    r = queue.replay_dead_letters(settings, reason=args.reason, topic=args.topic)
    print(f"dead letters: {r.read} read, {r.matched} matching, {r.already_replayed} already replayed, "
          f"{r.reinjected} re-injected into sync.dlq-replay (the running pipeline picks them up)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2); subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(errors.USAGE, f"{self.prog}: {errors.one_line(message)} (see `{self.prog} --help`)\n")


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _number_within(low: float, high: float | None = None, *, low_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value != value or (value <= low if low_open else value < low) or (high is not None and value > high):
            bounds = f"{'above' if low_open else 'at least'} {low:g}" + (f" and at most {high:g}" if high else "")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    return parse


def _verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept -v/--verbose after any subcommand too (`erpsync replay ... -v`), not only before it."""
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                if "-v" not in sub._option_string_actions:  # noqa: SLF001
                    sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                     help="debug logging, and a traceback with an error")
                _verbose_everywhere(sub)


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processes", type=_int_at_least(1), default=1,
                        help="start N local processes as one bytewax cluster (default 1)")
    parser.add_argument("--process-id", type=_int_at_least(0), help="join a cluster as this process "
                        "(ERPSYNC_FLOWS__PROCESS_ID); with --addresses")
    parser.add_argument("--addresses", help="every process's host:port, comma-separated, in process-id order "
                        "(ERPSYNC_FLOWS__ADDRESSES)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="erpsync", description=__doc__, epilog=EXIT_STATUSES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and a traceback with an error")
    parser.add_argument("--version", action="version", version=f"erpsync {__version__}")
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
    lg.add_argument("-n", "--lines", type=_int_at_least(0), default=40)
    lg.set_defaults(func=_stack_logs)

    conn_p = sub.add_parser("connectors", help="Debezium connectors on a Kafka Connect cluster")
    conn_sub = conn_p.add_subparsers(dest="action", required=True)
    conn_sub.add_parser("apply", help="create or update every debezium/*.json connector (PUT, idempotent)"
                        ).set_defaults(func=_connectors_apply)
    conn_sub.add_parser("status", help="connector and task states").set_defaults(func=_connectors_status)

    kc = sub.add_parser("kcat", help="kcat logged in to the pipeline's Kafka (e.g. `erpsync kcat -C -t sync.dlq -e`)")
    kc.add_argument("kcat_args", nargs=argparse.REMAINDER, help="kcat's own arguments")
    kc.set_defaults(func=lambda settings, args: kcat.run(settings, args.kcat_args))
    run_p = sub.add_parser("run", help="run the dataflows against Kafka (resumes from recovery snapshots)")
    _cluster_options(run_p)
    run_p.set_defaults(func=_run)
    ex_p = sub.add_parser("exceptions", help="the exception queue (ops database)")
    ex_sub = ex_p.add_subparsers(dest="action", required=True)
    ls = ex_sub.add_parser("list", help="exceptions, newest first")
    ls.add_argument("--kind", help="e.g. oversold, price_mismatch, dead_letter")
    ls.add_argument("--state", choices=["open", "resolved", "replayed"])
    ls.add_argument("--since", type=reconcile.parse_since, metavar="ISO|MS",
                    help="last seen at or after: ISO-8601 time (UTC without an offset) or epoch milliseconds")
    ls.add_argument("--limit", type=_int_at_least(1), default=200)
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
    sub.choices["reconcile"].set_defaults(func=_reconcile)

    rp = sub.add_parser("replay", help="run the whole pipeline over a kcat -J dump, no services needed")
    rp.add_argument("--input", type=Path, required=True, help="kcat -C -J output, one record a line")
    rp.add_argument("--output", type=Path, required=True, help="JSON lines {topic, key, value}")
    rp.add_argument("--workers", type=_int_at_least(1), default=1, help="bytewax workers (default 1)")
    rp.add_argument("--fail-on-dead-letters", action="store_true",
                    help="exit 4 when any record was dead-lettered (for CI)")
    _cluster_options(rp)
    rp.set_defaults(func=_replay)
    cf = sub.add_parser("capture-fixtures", help="script ERP/WMS changes on the local stack, dump the envelopes")
    cf.add_argument("--output", type=Path, default=Path("tests/fixtures/debezium"))
    cf.set_defaults(func=_capture_fixtures)
    dm = sub.add_parser("demo", help="show the pipeline at work on the local stack (after `stack up`)")
    dm.add_argument("--orders", type=_int_at_least(1), default=40,
                    help="channel orders the workload sends (default 40)")
    dm.add_argument("--rate", type=_number_within(0, low_open=True), default=4.0, help="orders per second (default 4)")
    dm.set_defaults(func=_demo)
    sim = sub.add_parser("simulate", help="play channels, ERP and WMS around a running pipeline (local stack)")
    sim.add_argument("--orders", type=_int_at_least(1), default=50, help="channel orders to send")
    sim.add_argument("--rate", type=_number_within(0), default=5.0, help="orders per second (0: as fast as possible)")
    sim.add_argument("--seed", type=int, default=1, help="same seed, same orders and faults")
    sim.add_argument("--tag", help="prefix of every id of the run, 2-16 letters/digits (default: random)")
    sim.add_argument("--fault-rate", type=_number_within(0, 1), default=0.15,
                     help="share of orders with an intake fault, 0 to 1")
    sim.add_argument("--timeout", type=_number_within(0, low_open=True), default=300.0,
                     help="seconds to wait for every order to finish")
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
    _verbose_everywhere(parser)
    return parser


EXIT_STATUSES = """\
exit status: 0 success; 1 a check failed (or the local stack did not start); 2 usage error;
3 a system unreachable (Kafka, Connect, PostgreSQL, MariaDB, Redis); 4 a data or configuration
problem (channel file, settings, dead letters with --fail-on-dead-letters); 5 internal error."""


INTERRUPTED = 130  # as a shell reports SIGINT


def _load_settings() -> Settings:
    """The settings, or a one-line error naming the environment variable that is wrong (exit 4)."""
    try:
        return load_settings()
    except ValidationError as exc:
        problems = describe_validation_error(exc)
        raise DataError("settings: " + re.sub(r"key '([^']+)'", lambda m: "ERPSYNC_" + m.group(1).upper().replace(
            ".", "__"), problems)) from exc
    except SettingsError as exc:
        raise DataError(f"settings: {errors.one_line(exc)} (a list or object setting is JSON, e.g. "
                        """ERPSYNC_FLOWS__LOCATIONS='["DC-EAST"]')""") from exc


def _configure_logging(command: str, verbose: bool) -> None:
    # Short commands stay quiet unless asked (-v); `erpsync run` is a service and logs what it does.
    level = logging.DEBUG if verbose else logging.INFO if command == "run" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # librdkafka's lines (rate-limited: erpsync.logs) only with -v, but for the service; the error says it in one.
    logging.getLogger(KAFKA_CLIENT_LOGGER).setLevel(
        logging.DEBUG if verbose else logging.WARNING if command == "run" else logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["kcat"]:  # everything after it is kcat's, options included
        return kcat.run(load_settings(), argv[1:])
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    _configure_logging(args.command, verbose)
    try:
        code: int = args.func(_load_settings(), args)
    except KeyboardInterrupt:
        print("erpsync: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # stdout closed early (`erpsync ... | head`): not an error worth a line
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return INTERRUPTED
    except stack.StackError as exc:
        # The component and its log, then the log's last lines: what to read next.
        print(f"erpsync: {exc}", file=sys.stderr)
        return errors.FAILED
    except Exception as exc:  # noqa: BLE001 - every error ends in one line and an exit status
        if isinstance(errors.root_cause(exc), KeyboardInterrupt):  # inside bytewax: wrapped in its error
            print("erpsync: interrupted", file=sys.stderr)
            return INTERRUPTED
        status, message = errors.classify(exc)
        if verbose:
            traceback.print_exc()
        print(f"erpsync {_command_name(args)}: {message}", file=sys.stderr)
        return status
    return code


def _command_name(args: argparse.Namespace) -> str:
    return " ".join(str(x) for x in (args.command, getattr(args, "action", None)) if x)


if __name__ == "__main__":
    sys.exit(main())
