"""Mapping files are checked when loaded: a mistake fails at start-up, naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.mapping import load_mappings

KEYS = {"item": ("sku",)}


def write(tmp_path: Path, fields: str) -> Path:
    doc = f'system = "erp"\ntable = "erp.items"\nentity = "item"\n[fields]\n{fields}'
    (tmp_path / "erp.items.toml").write_text(doc)
    return tmp_path


@pytest.mark.parametrize(("fields", "error"), [
    ('sku = "string"\nprice = { type = "decimal:2", min = 0 }', "'min' applies to int and long"),
    ('sku = "string"\nstatus = { type = "enum" }', "enum without symbols"),
    ('sku = "string"\nx = "float128"', "unknown type"),
    ('description = "string"', "key fields ['sku']"),
])
def test_bad_mappings_fail_at_load(tmp_path: Path, fields: str, error: str) -> None:
    with pytest.raises(ValueError, match="erp.items.toml") as info:
        load_mappings(KEYS, write(tmp_path, fields))
    assert error in str(info.value)


def test_fields_must_exist_in_the_entity(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not in entity item"):
        load_mappings(KEYS, write(tmp_path, 'sku = "string"\ncolour = "string"'), {"item": frozenset({"sku"})})
