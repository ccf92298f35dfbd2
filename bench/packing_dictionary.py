"""The zstd dictionary keys at rest are packed with (``flows.packing``): how well it packs, and how it was made.

Usage:
  python -m bench.packing_dictionary                      # figures for the shipped dictionary
  python -m bench.packing_dictionary --train OUT [--size 32768]   # train a new one (a new format byte)

Samples are the pickles the keyed steps pack (``(key, state)`` of every key at the end of every epoch
it changed in), taken from the whole production dataflow in this process (``bench.inprocess``).
Training uses a workload of its own (seed 11, tag "T"); the figures are measured on data the
dictionary never saw: a workload with another seed and tag, and the real Debezium output in
``tests/fixtures/debezium`` replayed. Per step: mean pickle size, mean packed size, and the
microseconds to pack and unpack one (pickling included).
"""

from __future__ import annotations

import argparse
import pickle
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard

from bench import inprocess
from bench.workload import TOPICS, Workload
from erpsync.runner import replay
from erpsync.settings import Settings
from flows import packing
from schemas.registry import SchemaRegistry

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "debezium"


def _collect(run: Callable[[], object]) -> dict[str, list[bytes]]:
    """The pickles `run` packs, by step (the step is the logic's; the key comes first in the pickle)."""
    seen: dict[str, list[bytes]] = defaultdict(list)
    original = packing.pack

    def recording(obj: Any) -> bytes:
        key, state = obj
        seen[type(state).__name__].append(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        return original(obj)

    packing.pack = recording
    try:
        run()
    finally:
        packing.pack = original
    return seen


def _workload(seed: int, tag: str, records: int) -> dict[str, list[bytes]]:
    w = Workload(skus=4000, customers=500, seed=seed, tag=tag)
    return _collect(lambda: inprocess.run(w.records(records), TOPICS))


def _fixtures() -> dict[str, list[bytes]]:
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "dump.jsonl"
        dump.write_bytes(b"".join((FIXTURES / n).read_bytes() for n in ("erp.jsonl", "wms.jsonl", "heartbeats.jsonl")))
        return _collect(lambda: replay(Settings(), SchemaRegistry.load(), dump, Path(tmp) / "out.jsonl"))


def _figures(name: str, samples: dict[str, list[bytes]]) -> None:
    print(f"{name}")
    total_raw = total_packed = 0
    for kind, pickles in sorted(samples.items(), key=lambda kv: -sum(map(len, kv[1]))):
        objs = [pickle.loads(p) for p in pickles]  # noqa: S301 - our own
        start = time.perf_counter()
        packed = [packing.pack(o) for o in objs]
        mid = time.perf_counter()
        back = [packing.unpack(p) for p in packed]
        end = time.perf_counter()
        assert back == objs, kind
        raw, small = sum(map(len, pickles)), sum(map(len, packed))
        total_raw, total_packed = total_raw + raw, total_packed + small
        n = len(pickles)
        print(f"  {kind:<16} {n:>7,} packs  pickle {raw / n:>6,.0f} B  packed {small / n:>5,.0f} B "
              f"({raw / small:4.1f}x)  pack {1e6 * (mid - start) / n:5.1f} us  unpack {1e6 * (end - mid) / n:5.1f} us")
    print(f"  {'all':<16} pickles {total_raw:,} B, packed {total_packed:,} B: {total_raw / total_packed:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=Path, metavar="OUT", help="train a dictionary and write it to OUT")
    parser.add_argument("--size", type=int, default=32768, help="--train: dictionary size in bytes")
    parser.add_argument("--dict-id", type=int, default=2, help="--train: the id written into the dictionary")
    args = parser.parse_args()
    if args.train:
        pool = [p for ps in _workload(11, "T", 200_000).values() for p in ps]
        random.Random(11).shuffle(pool)
        samples = pool[:60_000]
        d = zstandard.train_dictionary(args.size, samples, dict_id=args.dict_id, level=packing.LEVEL, threads=1)
        args.train.write_bytes(d.as_bytes())
        print(f"trained on {len(samples):,} of {len(pool):,} pickles ({sum(map(len, samples)):,} B): "
              f"{len(d.as_bytes()):,} B dictionary written to {args.train}")
        return
    _figures("held-out workload (seed 7, tag B; catalog, then the daily mix; 200,000 records)",
             _workload(7, "B", 200_000))
    _figures("real Debezium output (tests/fixtures/debezium, replayed)", _fixtures())


if __name__ == "__main__":
    main()
