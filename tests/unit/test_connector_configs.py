"""The connector JSONs carry the settings the spec's data contract assumes (spec section 2)."""

from __future__ import annotations

import pytest

from erpsync.stack.components import load_connector_configs

CONNECTORS = {c["name"]: c["config"] for c in load_connector_configs()}


def test_both_sources_are_defined() -> None:
    assert set(CONNECTORS) == {"erp-postgres", "wms-mariadb"}
    assert CONNECTORS["erp-postgres"]["topic.prefix"] == "erp"
    assert CONNECTORS["wms-mariadb"]["topic.prefix"] == "wms"


@pytest.mark.parametrize("name", sorted(CONNECTORS))
def test_contract_settings(name: str) -> None:
    cfg = CONNECTORS[name]
    assert cfg["key.converter"] == cfg["value.converter"] == "org.apache.kafka.connect.json.JsonConverter"
    assert cfg["key.converter.schemas.enable"] == cfg["value.converter.schemas.enable"] == "false"
    assert cfg["decimal.handling.mode"] == "string"
    assert cfg["tombstones.on.delete"] == "true"
    assert int(cfg["heartbeat.interval.ms"]) > 0
    assert cfg["signal.data.collection"]
    # Credentials are never literals in a connector config.
    assert cfg["database.password"].startswith("${env:")
    assert cfg["database.user"].startswith("${env:")
