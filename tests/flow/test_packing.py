"""Keys at rest packed with the shipped zstd dictionary (flows.packing)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import pytest

from bench import inprocess
from bench.workload import TOPICS, Workload
from flows import packing

# The dictionary of format 1 as shipped. Snapshots in recovery stores are packed with it: it must never
# change (a better one is a new file and a new format byte).
DICTIONARY_1_SHA256 = "716e37dddda0ca2e2dff26fdb2d6b71d159d9044eddd04598d9e7ce270b34367"


def _packed_by_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, bytes]]:
    """(object, packed) of every key the whole dataflow packed over a small workload it was not trained on."""
    seen: list[tuple[Any, bytes]] = []
    original = packing.pack

    def recording(obj: Any) -> bytes:
        packed = original(obj)
        seen.append((pickle.loads(pickle.dumps(obj)), packed))  # a copy: the step goes on with obj
        return packed

    monkeypatch.setattr(packing, "pack", recording)
    inprocess.run(Workload(skus=150, customers=40, seed=3, tag="P").records(5000), TOPICS)
    return seen


def test_every_state_the_pipeline_packs_unpacks_equal_and_packs_small(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _packed_by_the_pipeline(monkeypatch)
    kinds = {type(obj[1]).__name__ for obj, _ in seen}
    assert {"SkuState", "AtsState", "BookState", "RouteState", "OrderState"} <= kinds
    assert all(packed[0] == packing.ZSTD_1 and packing.unpack(packed) == obj for obj, packed in seen)
    pickled = sum(len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)) for obj, _ in seen)
    assert sum(len(packed) for _, packed in seen) * 3 < pickled  # measured: about 4x on held-out workloads


def test_older_snapshots_stay_readable_and_an_unknown_format_is_named() -> None:
    state = ("SKU-1", {"on_hand": 5, "name": "widget"})
    assert packing.unpack(pickle.dumps(state, protocol=2)) == state
    assert packing.unpack(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)) == state
    with pytest.raises(ValueError, match="unknown format 0x07"):
        packing.unpack(b"\x07" + packing.pack(state)[1:])


def test_the_shipped_dictionary_never_changes() -> None:
    data = (Path(packing.__file__).with_name("packing-1.zdict")).read_bytes()
    assert hashlib.sha256(data).hexdigest() == DICTIONARY_1_SHA256
