"""Shared fixtures: the schema registry and the real Debezium envelopes captured from the stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import configuration

from connectors.files import parse_dump_line
from flows.canonicalize import make_canonicalizer
from schemas.registry import SchemaRegistry
from state.changes import Canonicalizer
from state.records import RawRecord
from tests.tree import TREE_AT_START, snapshot

FIXTURES = Path(__file__).parent / "fixtures" / "debezium"

# Hypothesis keeps its example database (and caches) under .erpsync/, like every tool the tests run.
configuration.set_hypothesis_home_dir(Path(__file__).resolve().parents[1] / ".erpsync" / "cache" / "hypothesis")


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[TREE_AT_START] = snapshot()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `last` run after every other test (stable order otherwise)."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


@pytest.fixture(scope="session")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


@pytest.fixture(scope="session")
def canonicalizer(registry: SchemaRegistry) -> Canonicalizer:
    return make_canonicalizer(registry)


def load_dump(name: str) -> list[RawRecord]:
    """A captured kcat -J dump (erpsync capture-fixtures), as raw records."""
    out = []
    for n, line in enumerate((FIXTURES / name).read_bytes().splitlines(), 1):
        rec = parse_dump_line(line, n, name)
        assert isinstance(rec, RawRecord)
        out.append(rec)
    return out


def load_captured(*, transactions: bool = False) -> list[RawRecord]:
    """The change records of the ERP and the WMS, and heartbeats (and transaction metadata): the captured
    dumps, then any other *.jsonl there (a new table's hand-written envelopes, schemas/mappings/README.md)."""
    captured = ["erp.jsonl", "wms.jsonl", "heartbeats.jsonl"]
    others = sorted(p.name for p in FIXTURES.glob("*.jsonl") if p.name not in captured)
    records = [r for name in [*captured, *others] for r in load_dump(name)]
    return records if transactions else [r for r in records if not r.topic.endswith(".transaction")]


@pytest.fixture(scope="session")
def captured() -> list[RawRecord]:
    """Every change record of the fixtures: ERP, WMS, heartbeats, hand-written ones (no transaction metadata)."""
    return load_captured()


def envelope(raw: RawRecord) -> dict:  # type: ignore[type-arg]
    assert raw.value is not None
    doc: dict = json.loads(raw.value)  # type: ignore[type-arg]
    return doc
