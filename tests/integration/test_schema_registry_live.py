"""The local stack's schema registry (Apicurio): subjects registered, modes enforced, topics readable
with standard tools in the Confluent wire format.

Debian's kcat is built without Avro/Schema-Registry support (``kcat -s value=avro`` answers "This
build of kcat lacks Avro/Schema-Registry support"), so kcat reads the raw records here and
confluent-kafka's standard ``AvroDeserializer`` decodes them through the registry's
Confluent-compatible API, as any Confluent-framing consumer would.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from erpsync.channels import load_channels
from erpsync.kcat import kcat_command
from erpsync.settings import Settings
from erpsync.subjects import value_subjects
from schemas.compat import mode_of
from schemas.registry import SchemaRegistry

from .conftest import Pipeline, unique


@pytest.fixture(scope="module")
def client(settings: Settings) -> SchemaRegistryClient:
    assert settings.kafka.schema_registry_url == settings.registry.url  # the stack's default
    return SchemaRegistryClient({"url": settings.kafka.schema_registry_url})


def test_every_subject_is_registered_with_its_mode(client: SchemaRegistryClient) -> None:
    registry = SchemaRegistry.load()
    expected = value_subjects(registry, load_channels())
    assert set(expected) <= set(client.get_subjects())
    for subject, fullname in expected.items():
        latest = client.get_latest_version(subject)
        assert json.loads(latest.schema.schema_str) == registry.schema(fullname).definition, subject
        assert client.get_compatibility(subject) == mode_of(registry.schema(fullname).definition).value, subject


def test_the_registry_enforces_the_mode_too(client: SchemaRegistryClient) -> None:
    registry = SchemaRegistry.load()
    item = json.loads(json.dumps(registry.schema("io.erpsync.canonical.Item").definition))
    item["fields"].append({"name": "brand", "type": ["null", "string"], "default": None, "doc": "Brand."})
    assert client.test_compatibility("canonical.item-value", Schema(json.dumps(item), "AVRO")) is True
    item["fields"][-1] = {"name": "brand", "type": "string", "doc": "Required: breaks FULL."}
    assert client.test_compatibility("canonical.item-value", Schema(json.dumps(item), "AVRO")) is False


def test_its_password_is_not_on_its_command_line(settings: Settings) -> None:
    pid = int((settings.stack.home / "registry" / "registry.pid").read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert "apicurio-registry-app" in cmdline
    assert settings.registry.password.get_secret_value() not in cmdline


def kcat_records(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record of topic, as kcat reads them (length-prefixed, binary-safe).

    A topic that does not exist yet (the pipeline creates it as it starts) reads as empty.
    """
    # as `erpsync kcat` runs it: logged in through a properties file, with a librdkafka whose SCRAM
    # Kafka 4 accepts
    with kcat_command(settings) as (kcat, env):
        done = subprocess.run([*kcat, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", r"%K %S\n%k%s"],
                              capture_output=True, check=False, timeout=60, env=env)
    if done.returncode != 0:
        assert b"Unknown topic" in done.stderr, done.stderr
        return []
    out = done.stdout
    records: list[tuple[bytes | None, bytes | None]] = []
    at = 0
    while at < len(out):
        header_end = out.index(b"\n", at)
        key_len, value_len = (int(n) for n in out[at:header_end].split())
        at = header_end + 1
        key = None if key_len < 0 else out[at:at + key_len]
        at += max(key_len, 0)
        value = None if value_len < 0 else out[at:at + value_len]
        at += max(value_len, 0)
        records.append((key, value))
    return records


def test_an_output_topic_read_with_kcat_through_the_registry(
    settings: Settings, erp: Any, client: SchemaRegistryClient, tmp_path: Path
) -> None:
    pipeline = Pipeline(tmp_path).start()  # default settings: Confluent framing through the registry
    try:
        sku = unique("SKU-REG")
        erp.execute("INSERT INTO erp.items (sku, description, uom, safety_stock) VALUES (%s, 'registry', 'EA', 3)",
                    (sku,))
        deadline, mine = time.monotonic() + 90, []
        while not mine and time.monotonic() < deadline:
            mine = [v for k, v in kcat_records(settings, "canonical.item") if k and json.loads(k) == [sku]]
            time.sleep(1)
        assert mine, f"no canonical.item record for {sku} within 90 s; see {tmp_path / 'run.log'}"
    finally:
        pipeline.stop()
    [value] = mine
    assert value is not None and value[:1] == b"\x00"  # Confluent wire format: magic byte, schema id
    schema_id = int.from_bytes(value[1:5], "big")
    assert schema_id == client.get_latest_version("canonical.item-value").schema_id
    record = AvroDeserializer(client)(value, SerializationContext("canonical.item", MessageField.VALUE))
    assert record is not None
    assert (record["sku"], record["description"], record["uom"], record["safety_stock"], record["op"]) == \
        (sku, "registry", "EA", 3, "upsert")
    assert record["source"]["table"] == "erp.items"
