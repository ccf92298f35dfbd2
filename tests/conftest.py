"""Shared fixtures: the schema registry and the real Debezium envelopes captured from the stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.files import parse_dump_line
from flows.canonicalize import make_canonicalizer
from schemas.registry import SchemaRegistry
from state.changes import Canonicalizer
from state.records import RawRecord

FIXTURES = Path(__file__).parent / "fixtures" / "debezium"


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
    """The captured change records of the ERP and the WMS, and heartbeats (and transaction metadata)."""
    records = load_dump("erp.jsonl") + load_dump("wms.jsonl") + load_dump("heartbeats.jsonl")
    return records if transactions else [r for r in records if not r.topic.endswith(".transaction")]


@pytest.fixture(scope="session")
def captured() -> list[RawRecord]:
    """Every captured change record: ERP, WMS and heartbeats (without transaction metadata)."""
    return load_captured()


def envelope(raw: RawRecord) -> dict:  # type: ignore[type-arg]
    assert raw.value is not None
    doc: dict = json.loads(raw.value)  # type: ignore[type-arg]
    return doc
