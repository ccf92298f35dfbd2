"""The schema registry subjects of the Avro contract: which schema each topic carries, registered up front.

Subjects follow the Confluent serializer's default TopicNameStrategy, ``<topic>-value``: one per
canonical entity topic, per Avro channel topic (availability and order status), for the ERP intake
topic and for ``sync.exceptions``. Registering them when the registry starts (``erpsync stack up``,
``erpsync schemas register``) means readers find every schema before the first record is written,
and the registry enforces each schema's declared compatibility mode on every later version.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from schemas.compat import mode_of
from schemas.registry import SchemaRegistry, schema_text
from state import EXCEPTION_SCHEMA
from state.availability import AVAILABILITY_SCHEMA
from state.channels import Channel
from state.intake import ACCEPTED_ORDER_SCHEMA, ORDER_INTAKE_OUT_TOPIC
from state.order_status import ORDER_STATUS_SCHEMA
from state.records import EXCEPTIONS_TOPIC

log = logging.getLogger(__name__)


def value_subjects(registry: SchemaRegistry, channels: Sequence[Channel]) -> dict[str, str]:
    """Subject -> Avro full name of the schema its topic's values are written with."""
    subjects = {f"{e.topic}-value": e.name for e in registry.entities().values()}
    subjects[f"{ORDER_INTAKE_OUT_TOPIC}-value"] = ACCEPTED_ORDER_SCHEMA
    subjects[f"{EXCEPTIONS_TOPIC}-value"] = EXCEPTION_SCHEMA
    for c in channels:
        if c.outputs.kafka and c.outputs.format == "avro":  # JSON channels' topics carry no Avro
            subjects[f"{c.topic}-value"] = AVAILABILITY_SCHEMA
            subjects[f"{c.order_status_topic}-value"] = ORDER_STATUS_SCHEMA
    return dict(sorted(subjects.items()))


def register(url: str, registry: SchemaRegistry, channels: Sequence[Channel]) -> dict[str, int]:
    """Register every subject's schema and set its compatibility mode; idempotent. Subject -> schema id.

    The registry refuses a version that breaks the subject's mode against what it already holds,
    which makes this a second, independent compatibility check of the contract.
    """
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient  # noqa: PLC0415

    logging.getLogger("httpx2").setLevel(logging.WARNING)  # its client logs every request at INFO
    client = SchemaRegistryClient({"url": url})
    existing = set(client.get_subjects())
    ids: dict[str, int] = {}
    for subject, fullname in value_subjects(registry, channels).items():
        mode = mode_of(registry.schema(fullname).definition).value
        schema = Schema(schema_text(registry, fullname), "AVRO")
        if subject in existing:
            latest = client.get_latest_version(subject)
            registered_id = latest.schema_id
            same = latest.schema.schema_str == schema.schema_str
            if same and registered_id is not None and client.get_compatibility(subject) == mode:
                ids[subject] = registered_id  # already registered: nothing to write
                continue
            client.set_compatibility(subject, mode)  # the mode first: the new version is checked under it
        ids[subject] = client.register_schema(subject, schema)
        if subject not in existing:
            client.set_compatibility(subject, mode)
    log.info("registered %d subjects at %s", len(ids), url)
    return ids

