"""The one place that turns records into Avro bytes and back.

The .avsc files in ``avro/`` are the contract. They are loaded once at start-up into a
:class:`SchemaRegistry`, which knows every record schema by full name, its Parsing Canonical Form
and its CRC-64-AVRO fingerprint. Two framings exist on the wire (spec, section 3):

* Avro single-object encoding ``C3 01 <8-byte fingerprint, little-endian> <Avro binary>``, the
  default: the schema files themselves are the registry, no server is needed.
* Confluent wire format ``00 <4-byte schema id, big-endian> <Avro binary>`` when a schema registry
  URL is configured, through confluent-kafka's own client and serializer.

Flows never pick a framing themselves: they get a serializer from :func:`make_value_serializer`
and a deserializer from :func:`make_value_deserializer`, which reads both framings.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.types import Schema

logger = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).with_name("avro")
RELEASED_DIR = Path(__file__).with_name("released")  # released/v1, released/v2, ...: every release
COMMON_FILE = "common.avsc"
_VERSION_DIR = re.compile(r"v([1-9][0-9]*)")

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_HEADER_LEN = len(SINGLE_OBJECT_MAGIC) + 8

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})
# What fastavro raises on bytes that do not match the writer schema.
_DECODE_ERRORS = (EOFError, ValueError, IndexError, KeyError, TypeError, OverflowError, StopIteration)

ValueSerializer = Callable[[str, str, Mapping[str, Any]], bytes]
"""``(topic, schema full name, record) -> bytes``."""
ValueDeserializer = Callable[[str, bytes], tuple[str, dict[str, Any]]]
"""``(topic, bytes) -> (schema full name, record)``."""


@dataclass(frozen=True)
class RecordSchema:
    """A record schema ready for serde."""

    name: str
    definition: dict[str, Any]  # self-contained JSON, docs included: what a schema registry stores
    parsed: Schema  # fastavro's parsed form, what the reader/writer use
    canonical_form: str
    fingerprint: bytes  # CRC-64-AVRO of canonical_form, 8 bytes little-endian as on the wire


@dataclass(frozen=True)
class EntitySchema:
    """A canonical entity: its record schema plus the metadata mappings and flows key off."""

    entity: str  # e.g. "order_line"
    name: str  # Avro full name, e.g. "io.erpsync.canonical.OrderLine"
    owner: str  # system of record: "erp" or "wms"
    key: tuple[str, ...]
    fields: dict[str, Any]  # every field of the record, in order -> its Avro type (JSON)
    topic: str  # e.g. "canonical.order-line"


class SchemaRegistry:
    """Every record schema of the contract by full name, and single-object encode/decode."""

    def __init__(
        self,
        definitions: Mapping[str, dict[str, Any]],
        released: Mapping[str, dict[str, Any]] | Sequence[Mapping[str, dict[str, Any]]] | None = None,
    ) -> None:
        """Compile self-contained schema definitions (as :func:`read_schema_files` returns them).

        ``released``: released versions (one release, or every release oldest first). Their
        fingerprints stay decodable, resolved to the current schema, so data written with any release
        can still be read after an upgrade.
        """
        self._schemas = {name: _compile(d) for name, d in definitions.items()}
        schemas = self._schemas.values()
        self._entities = {e.entity: e for e in map(_entity_schema, schemas) if e}
        # Hot path: name -> (header, parsed) and fingerprint -> (name, writer, reader or None).
        self._encoders = {s.name: (SINGLE_OBJECT_MAGIC + s.fingerprint, s.parsed) for s in schemas}
        self._decoders: dict[bytes, tuple[str, Schema, Schema | None]] = {}
        releases = [released] if isinstance(released, Mapping) else list(released or ())
        for release in releases:
            for name, definition in release.items():
                if name in self._schemas:
                    old = _compile(definition)
                    self._decoders[old.fingerprint] = (name, old.parsed, self._schemas[name].parsed)
        for s in schemas:
            self._decoders[s.fingerprint] = (s.name, s.parsed, None)

    @classmethod
    def load(cls, directory: Path | None = None, *, released: Path | None = None) -> SchemaRegistry:
        """Load the schemas in ``directory`` (default: the package's contract).

        ``released``: a release history (``v1/``, ``v2/``, ...) or one release's directory of .avsc
        files; with the default directory, the package's release history.
        """
        if directory is None:
            directory = SCHEMA_DIR
            released = RELEASED_DIR if released is None else released
        history: list[dict[str, dict[str, Any]]] = []
        if released is not None:
            history = [d for _, d in read_history(released)] or [read_schema_files(released)]
        registry = cls(read_schema_files(directory), history)
        logger.info("loaded %d Avro schemas from %s (%d release(s))", len(registry._schemas), directory,
                    len(history))
        return registry

    def names(self) -> list[str]:
        return sorted(self._schemas)

    def has(self, fullname: str) -> bool:
        return fullname in self._schemas

    def schema(self, fullname: str) -> RecordSchema:
        try:
            return self._schemas[fullname]
        except KeyError:
            raise KeyError(f"no Avro schema named {fullname!r}") from None

    def entities(self) -> dict[str, EntitySchema]:
        return dict(self._entities)

    def entity(self, name: str) -> EntitySchema:
        try:
            return self._entities[name]
        except KeyError:
            raise KeyError(f"no canonical entity named {name!r}") from None

    def encode(self, fullname: str, record: Mapping[str, Any]) -> bytes:
        """Avro single-object encoding of ``record``; ValueError if it does not fit the schema.

        Unknown fields are an error rather than silently dropped (a mapping typo must not lose
        data); missing fields are allowed only where the schema has a default.
        """
        try:
            header, parsed = self._encoders[fullname]
        except KeyError:
            raise KeyError(f"no Avro schema named {fullname!r}") from None
        buf = BytesIO()
        buf.write(header)
        try:
            schemaless_writer(buf, parsed, record, strict_allow_default=True)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"record does not fit {fullname}: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """Inverse of :meth:`encode`; raises ValueError on anything that is not a known record."""
        if data[:2] != SINGLE_OBJECT_MAGIC:
            raise ValueError(f"not Avro single-object encoded: starts with {data[:2].hex()!r}, not 'c301'")
        if len(data) < _HEADER_LEN:
            raise ValueError(f"truncated Avro single-object header ({len(data)} bytes)")
        fp = bytes(data[2:_HEADER_LEN])
        entry = self._decoders.get(fp)
        if entry is None:
            raise ValueError(f"unknown Avro schema fingerprint {fp.hex()}: not a schema this build knows")
        name, writer, reader = entry
        return name, _read_avro(data, _HEADER_LEN, writer, reader)


def _read_avro(data: bytes, offset: int, writer: Schema, reader: Schema | None) -> dict[str, Any]:
    """Decode one Avro binary record at ``offset``; every failure becomes a ValueError."""
    buf = BytesIO(data)
    buf.seek(offset)
    try:
        record = schemaless_reader(buf, writer, reader)
    except _DECODE_ERRORS as exc:
        raise ValueError(f"Avro body does not match its writer schema: {exc!r}") from exc
    if buf.tell() != len(data):
        raise ValueError(f"{len(data) - buf.tell()} trailing bytes after the Avro record")
    if not isinstance(record, dict):
        raise ValueError(f"Avro body is not a record: {type(record).__name__}")
    return record


def read_schema_files(directory: Path) -> dict[str, dict[str, Any]]:
    """Every record schema in ``directory`` as self-contained JSON, by full name.

    ``common.avsc`` holds named types shared by the other files. They are inlined where first used
    so that each schema stands alone, as fingerprints and schema registries require.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"no schema directory {directory}")
    shared: dict[str, Any] = {}
    common = directory / COMMON_FILE
    if common.exists():
        for named in json.loads(common.read_text()):
            shared[_fullname(named, None)] = named
    schemas: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.avsc")):
        if path.name == COMMON_FILE:
            continue
        definition = _inline(json.loads(path.read_text()), shared, set(), None)
        schemas[_fullname(definition, None)] = definition
    return schemas


def released_versions(root: Path) -> list[tuple[str, Path]]:
    """The release directories under ``root`` (``v1``, ``v2``, ...), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _VERSION_DIR.fullmatch(p.name))]
    return [(p.name, p) for _, p in sorted(found)]


def read_history(root: Path) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """Every released version's schemas by full name, oldest first."""
    return [(label, read_schema_files(path)) for label, path in released_versions(root)]


def _fullname(named: Mapping[str, Any], namespace: str | None) -> str:
    name: str = named["name"]
    if "." in name:
        return name
    namespace = named.get("namespace", namespace)
    return f"{namespace}.{name}" if namespace else name


def _inline(node: Any, shared: Mapping[str, Any], defined: set[str], namespace: str | None) -> Any:
    """Copy of ``node`` with the first reference to each shared named type replaced by its definition."""
    if isinstance(node, list):
        return [_inline(branch, shared, defined, namespace) for branch in node]
    if isinstance(node, str):
        if node in PRIMITIVES:
            return node
        full = node if "." in node else (f"{namespace}.{node}" if namespace else node)
        if full in shared and full not in defined:
            return _inline(copy.deepcopy(shared[full]), shared, defined, namespace)
        return node  # defined earlier in this schema, or unknown (fastavro reports it)
    kind = node["type"]
    if kind in _NAMED_KINDS:
        full = _fullname(node, namespace)
        defined.add(full)
        if kind in ("record", "error"):
            inner_ns = full.rpartition(".")[0] or None
            fields = [dict(f, type=_inline(f["type"], shared, defined, inner_ns)) for f in node["fields"]]
            return dict(node, fields=fields)
        return dict(node)
    if kind == "array":
        return dict(node, items=_inline(node["items"], shared, defined, namespace))
    if kind == "map":
        return dict(node, values=_inline(node["values"], shared, defined, namespace))
    return dict(node, type=_inline(kind, shared, defined, namespace))  # {"type": "long", "logicalType": ...}


def _compile(definition: dict[str, Any]) -> RecordSchema:
    if definition.get("type") != "record":
        raise ValueError(f"top-level Avro schemas must be records, got {definition.get('type')!r}")
    parsed = parse_schema(definition, named_schemas={})
    canonical = to_parsing_canonical_form(parsed)
    return RecordSchema(
        name=_fullname(definition, None),
        definition=definition,
        parsed=parsed,
        canonical_form=canonical,
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),  # fastavro gives little-endian hex
    )


def _entity_schema(schema: RecordSchema) -> EntitySchema | None:
    """Entity metadata of a canonical record (one with an "entity" attribute), validated."""
    d = schema.definition
    if "entity" not in d:
        return None
    fields = {f["name"]: f["type"] for f in d["fields"]}
    key = tuple(d.get("key", ()))
    problems = []
    if d.get("owner") not in ("erp", "wms"):
        problems.append(f"owner must be 'erp' or 'wms', got {d.get('owner')!r}")
    if not key:
        problems.append("no key fields")
    for k in key:
        if k not in fields:
            problems.append(f"key field {k!r} is not a field")
        elif isinstance(fields[k], list) and "null" in fields[k]:
            problems.append(f"key field {k!r} must not be nullable")
    if problems:
        raise ValueError(f"{schema.name}: " + "; ".join(problems))
    entity: str = d["entity"]
    return EntitySchema(
        entity=entity,
        name=schema.name,
        owner=d["owner"],
        key=key,
        fields=fields,
        topic="canonical." + entity.replace("_", "-"),
    )


# ------------------------------------------------------------------ serializers for Kafka values


def schema_text(registry: SchemaRegistry, fullname: str) -> str:
    """A schema as registered in a schema registry: its self-contained definition, docs included."""
    return json.dumps(registry.schema(fullname).definition)


def make_value_serializer(registry: SchemaRegistry, schema_registry_url: str | None) -> ValueSerializer:
    """Serializer for Kafka record values: single-object encoding, or Confluent framing with a URL."""
    if schema_registry_url:
        return _ConfluentSerde(registry, schema_registry_url).serialize

    def serialize(topic: str, fullname: str, record: Mapping[str, Any]) -> bytes:
        return registry.encode(fullname, record)

    return serialize


def make_value_deserializer(registry: SchemaRegistry, schema_registry_url: str | None) -> ValueDeserializer:
    """Deserializer for Kafka record values in either framing, told apart by the first byte.

    Reading both means switching to or from a schema registry never strands the records already in
    a topic.
    """
    confluent = _ConfluentSerde(registry, schema_registry_url) if schema_registry_url else None

    def deserialize(topic: str, data: bytes) -> tuple[str, dict[str, Any]]:
        if data[:1] == SINGLE_OBJECT_MAGIC[:1]:
            return registry.decode(data)
        if data[:1] == CONFLUENT_MAGIC:
            if confluent is None:
                raise ValueError(f"{topic}: record in Confluent wire format, but no schema registry URL")
            return confluent.deserialize(data)
        raise ValueError(f"{topic}: record is neither Avro single-object encoded nor Confluent framed "
                         f"(first byte {data[:1].hex()!r})")

    return deserialize


class _ConfluentSerde:
    """Confluent wire format through a schema registry server.

    Everything is built on first use, so configuring a URL costs nothing until a record is written
    or read; serializers are per (topic, schema) because the subject is ``<topic>-value``
    (TopicNameStrategy, the serializer's default).
    """

    def __init__(self, registry: SchemaRegistry, url: str) -> None:
        self._registry = registry
        self._url = url
        self._client: Any = None
        self._serializers: dict[tuple[str, str], Any] = {}
        self._writers: dict[int, tuple[str, Schema, Schema | None]] = {}

    def _registry_client(self) -> Any:
        if self._client is None:
            client_class, _ = _schema_registry_api()
            self._client = client_class({"url": self._url})
        return self._client

    def serialize(self, topic: str, fullname: str, record: Mapping[str, Any]) -> bytes:
        serializer = self._serializers.get((topic, fullname))
        if serializer is None:
            _, serializer_class = _schema_registry_api()
            schema_str = schema_text(self._registry, fullname)
            serializer = serializer_class(self._registry_client(), schema_str)
            self._serializers[(topic, fullname)] = serializer
        data: bytes = serializer(record, SerializationContext(topic, MessageField.VALUE))
        return data

    def deserialize(self, data: bytes) -> tuple[str, dict[str, Any]]:
        if len(data) < 5:
            raise ValueError(f"truncated Confluent wire format header ({len(data)} bytes)")
        schema_id = int.from_bytes(data[1:5], "big")
        entry = self._writers.get(schema_id)
        if entry is None:
            entry = self._writers[schema_id] = self._fetch_writer(schema_id)
        name, writer, reader = entry
        return name, _read_avro(data, 5, writer, reader)

    def _fetch_writer(self, schema_id: int) -> tuple[str, Schema, Schema | None]:
        """The writer schema registered under ``schema_id``, resolved to our schema of the same name."""
        registered = self._registry_client().get_schema(schema_id)
        if registered.references:
            raise ValueError(f"schema id {schema_id} uses schema references, which erpsync does not resolve")
        definition = json.loads(registered.schema_str)
        if not isinstance(definition, dict) or definition.get("type") != "record":
            raise ValueError(f"schema id {schema_id} is not an Avro record schema")
        name = _fullname(definition, None)
        reader = self._registry.schema(name).parsed if self._registry.has(name) else None
        return name, parse_schema(definition, named_schemas={}), reader


def _schema_registry_api() -> tuple[Any, Any]:
    """confluent-kafka's schema registry client and Avro serializer classes.

    Imported on first use: they need the ``confluent-kafka[avro,schemaregistry]`` extras, which
    single-object encoding does not.
    """
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient  # noqa: PLC0415
        from confluent_kafka.schema_registry.avro import AvroSerializer  # noqa: PLC0415
    except ImportError as exc:
        raise RuntimeError(
            "a schema registry URL is configured, but confluent-kafka's schema registry support is not "
            "installed: pip install 'confluent-kafka[avro,schemaregistry]'"
        ) from exc
    return SchemaRegistryClient, AvroSerializer
