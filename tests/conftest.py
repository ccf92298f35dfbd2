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


@pytest.fixture(scope="session")
def captured() -> list[RawRecord]:
    """Every captured record: ERP, WMS and heartbeats."""
    return load_dump("erp.jsonl") + load_dump("wms.jsonl") + load_dump("heartbeats.jsonl")


def envelope(raw: RawRecord) -> dict:  # type: ignore[type-arg]
    assert raw.value is not None
    doc: dict = json.loads(raw.value)  # type: ignore[type-arg]
    return doc
