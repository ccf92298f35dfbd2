"""Loading channel definitions: one declarative TOML file per channel.

The directory is ``ERPSYNC_FLOWS__CHANNELS_DIR`` (default: the packaged ``erpsync/config/channels``);
adding a channel is adding a file, no code changes (README, "Adding a channel"). A channel may
only name known WMS locations (``ERPSYNC_FLOWS__LOCATIONS``, default the reference DC-EAST,
DC-WEST, DC-CENTRAL): a misspelled location is an error, not a channel that sees no stock.
Every problem is reported in one line naming the file, the key and what is wrong.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from erpsync.settings import Settings
from state.channels import Channel

CHANNELS_DIR = Path(__file__).with_name("config") / "channels"
REFERENCE_LOCATIONS = ("DC-EAST", "DC-WEST", "DC-CENTRAL")


class ChannelConfigError(ValueError):
    """A channel definition that cannot be used; the message is one line naming file and key."""


def load_channels(directory: Path | None = None,
                  locations: Iterable[str] | None = REFERENCE_LOCATIONS) -> tuple[Channel, ...]:
    """Every channel definition in directory (default: the packaged one), sorted by id.

    locations: the known WMS locations a channel may name (None: any name is accepted).
    """
    directory = directory or CHANNELS_DIR
    if not directory.is_dir():
        raise ChannelConfigError(f"channel directory {directory}: not a directory")
    known = None if locations is None else tuple(locations)
    channels: list[Channel] = []
    origin: dict[str, Path] = {}
    for path in sorted(directory.glob("*.toml")):
        channel = _load_one(path, known)
        if channel.id in origin:
            raise ChannelConfigError(f"channel definition {path}: key 'id': {channel.id!r} is already defined "
                                     f"by {origin[channel.id]}")
        origin[channel.id] = path
        channels.append(channel)
    if not channels:
        raise ChannelConfigError(f"channel directory {directory}: no channel definitions (*.toml)")
    return tuple(sorted(channels, key=lambda c: c.id))


def configured_channels(settings: Settings) -> tuple[Channel, ...]:
    """The channels of ``ERPSYNC_FLOWS__CHANNELS_DIR``, checked against ``ERPSYNC_FLOWS__LOCATIONS``."""
    return load_channels(settings.flows.channels_dir, settings.flows.locations)


def _load_one(path: Path, known: tuple[str, ...] | None) -> Channel:
    where = f"channel definition {path}"
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ChannelConfigError(f"{where}: not valid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ChannelConfigError(f"{where}: cannot be read: {exc}") from exc
    try:
        channel = Channel.model_validate(doc)
    except ValidationError as exc:
        raise ChannelConfigError(f"{where}: {describe_validation_error(exc)}") from exc
    if known is not None:
        for location in channel.locations or ():
            if location not in known:
                close = difflib.get_close_matches(location, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ChannelConfigError(
                    f"{where}: key 'locations': unknown location {location!r} ({hint}known: {', '.join(known)};"
                    " ERPSYNC_FLOWS__LOCATIONS declares them)")
    return channel


def describe_validation_error(exc: ValidationError) -> str:
    """A pydantic error on one line: each problem as `key 'a.b': what is wrong (got value)`."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(file)"
        if err["type"] == "extra_forbidden":
            problems.append(f"key {key!r}: not a channel setting")
        elif err["type"] == "missing":
            problems.append(f"key {key!r}: required")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"key {key!r}: {msg} (got {_short(err.get('input'))})")
    return "; ".join(problems)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class OutputPlan:
    """Where each channel's records go, from its ``[outputs]`` table: the live pipeline and replay share it."""

    json_topics: frozenset[str]  # availability.<id> and order-status.<id> of channels that read JSON
    kafka_off: frozenset[str]  # the topics of channels with kafka = false: not published
    redis_channels: frozenset[str]  # channel ids whose ATS is written to Redis ats:<id>

    @classmethod
    def of(cls, channels: Sequence[Channel]) -> OutputPlan:
        return cls(
            json_topics=frozenset(t for c in channels if c.outputs.format == "json"
                                  for t in (c.topic, c.order_status_topic)),
            kafka_off=frozenset(t for c in channels if not c.outputs.kafka for t in (c.topic, c.order_status_topic)),
            redis_channels=frozenset(c.id for c in channels if c.outputs.redis),
        )

    def format_of(self, topic: str) -> str:
        return "json" if topic in self.json_topics else "avro"
