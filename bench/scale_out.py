"""The whole pipeline in replay, one process against a cluster of processes, over a partitioned dump.

Usage: python -m bench.scale_out [--records 1000000] [--partitions 6] [--processes 2] [--workers 1]
Writes a dump (``bench.make_dump``) spread over `--partitions` per topic (``bench.partitions``), then
times ``erpsync replay`` over it with 1 process and with ``--processes N`` (N x `--workers`), each a
whole command in a subprocess (start-up included), and prints events/s of each and their ratio. The
two outputs must hold the same records (checked: a multiset of lines). Both runs are in the same
session on the same file, so the ratio holds when the machine's speed drifts.

What the cluster shares: canonicalize (keyed by partition) and the keyed stages. Not the reading
(the dump is one file, read by one worker: ``connectors.files.DumpSource`` has one part) nor the
output (one writer, ``ReplaySink``, Avro-encodes and decodes every record). The live pipeline reads
each raw partition in the worker that owns it and writes Kafka from its output parts
(``flows.output_parts``), spread over the workers.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.make_dump import generate
from bench.partitions import spread


def replay(dump: Path, out: Path, processes: int, workers: int) -> float:
    """Seconds of one `erpsync replay` over `dump`, start to exit."""
    cluster = ["--processes", str(processes)] if processes > 1 else []
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "erpsync", "replay", "--input", str(dump), "--output", str(out),
                             "--workers", str(workers), *cluster], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"erpsync replay failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds


def fingerprint(path: Path) -> tuple[int, int]:
    """(lines, sum of their hashes): equal for two files holding the same lines in any order."""
    lines = total = 0
    with path.open("rb") as fh:
        for line in fh:
            lines += 1
            total = (total + int.from_bytes(hashlib.blake2b(line, digest_size=8).digest())) % 2**64
    return lines, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6, help="per topic (Connect's default here: 6)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="per process, in both runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="erpsync-scale-out-") as tmp:
        dump, single = Path(tmp) / "dump.jsonl", Path(tmp) / "single.jsonl"
        generate(args.records, single)
        spread(single, dump, args.partitions)
        print(f"records                       {args.records:,} over {args.partitions} partitions per topic")
        rates = {}
        for n in (1, args.processes):
            seconds = replay(dump, Path(tmp) / f"out-{n}.jsonl", n, args.workers)
            rates[n] = args.records / seconds
            print(f"{n} process(es) x {args.workers} worker(s)   {rates[n]:,.0f} events/s ({seconds:.1f} s)")
        same = fingerprint(Path(tmp) / "out-1.jsonl") == fingerprint(Path(tmp) / f"out-{args.processes}.jsonl")
        print(f"ratio {args.processes} processes / 1        {rates[args.processes] / rates[1]:.2f}")
        print(f"same records in both outputs  {'yes' if same else 'NO'}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
