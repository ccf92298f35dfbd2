"""The schema registry's settings and subjects: the local stack's registry is the default framing."""

from __future__ import annotations

import pytest

from erpsync.channels import load_channels
from erpsync.settings import KafkaSettings, Settings
from erpsync.subjects import value_subjects
from schemas.registry import SchemaRegistry


def test_the_default_registry_url_is_the_local_stacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ERPSYNC_KAFKA__SCHEMA_REGISTRY_URL", raising=False)
    monkeypatch.setenv("ERPSYNC_REGISTRY__PORT", "28081")
    assert Settings().kafka.schema_registry_url == "http://127.0.0.1:28081/apis/ccompat/v7"
    monkeypatch.setenv("ERPSYNC_KAFKA__SCHEMA_REGISTRY_URL", "http://registry.example:8080/apis/ccompat/v7")
    assert Settings().kafka.schema_registry_url == "http://registry.example:8080/apis/ccompat/v7"
    monkeypatch.setenv("ERPSYNC_KAFKA__SCHEMA_REGISTRY_URL", "")  # empty: single-object encoding
    assert Settings().kafka.schema_registry_url is None
    assert Settings(kafka=KafkaSettings()).kafka.schema_registry_url is None  # built in code: as given


def test_every_avro_topic_has_a_subject() -> None:
    registry, channels = SchemaRegistry.load(), load_channels()
    subjects = value_subjects(registry, channels)
    for entity in registry.entities().values():
        assert subjects[f"{entity.topic}-value"] == entity.name
    assert subjects["erp.order-intake-value"] == "io.erpsync.AcceptedOrder"
    assert subjects["sync.exceptions-value"] == "io.erpsync.SyncException"
    for c in channels:
        avro = c.outputs.kafka and c.outputs.format == "avro"
        assert (subjects.get(f"{c.topic}-value") == "io.erpsync.Availability") is avro, c.id
        assert (subjects.get(f"{c.order_status_topic}-value") == "io.erpsync.OrderStatus") is avro, c.id
    assert any(c.outputs.format == "json" for c in channels)  # the exclusion above is exercised
    assert set(subjects.values()) == set(registry.names())  # every schema is registered somewhere

