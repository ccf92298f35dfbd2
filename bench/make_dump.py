"""Write benchmark data (``bench.workload``) as a kcat -J dump, the input of ``erpsync replay``.

Usage: python -m bench.make_dump --events 1000000 [--skus N] [--output /tmp/erpsync-bench.jsonl]
The records are the realistic mix of ``bench.workload``: catalog first, then orders through their
life, stock movements, deletes, duplicates; Debezium's transaction metadata included. Offsets count
per topic (one partition each, as the reference connectors' topics have).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from bench.workload import Workload
from erpsync.progress import track

DEFAULT_DUMP = Path("/tmp/erpsync-bench.jsonl")


def default_skus(events: int) -> int:
    """A catalog about a fifth of the records (items, prices, stock), the rest the daily mix."""
    return max(100, events // 35)


def generate(events: int, output: Path, skus: int | None = None, seed: int = 7,
             on_event: Callable[[int], None] | None = None) -> int:
    """Write about `events` records (whole transactions) to `output`; returns how many were written."""
    offsets: dict[str, int] = {}
    n = 0
    with output.open("w") as fh:
        skus = skus or default_skus(events)
        for record in Workload(skus=skus, customers=min(1000, skus), seed=seed).records(events):
            offset = offsets[record.topic] = offsets.get(record.topic, -1) + 1
            fh.write(record.kcat(offset) + "\n")
            n += 1
            if on_event is not None and n % 1000 == 0:  # progress hook (erpsync.progress)
                on_event(1000)
    return n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--skus", type=int)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=DEFAULT_DUMP)
    args = parser.parse_args()
    with track("make_dump", total=args.events, unit="events") as progress:
        n = generate(args.events, args.output, args.skus, args.seed, on_event=progress.advance)
    print(f"wrote {n} records to {args.output}")


if __name__ == "__main__":
    main()
