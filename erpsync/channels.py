"""Loading channel definitions: one declarative TOML file per channel (``erpsync/config/channels``).

Adding a channel is adding a file; no code changes. See the README's how-to.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from state.channels import Channel

CHANNELS_DIR = Path(__file__).with_name("config") / "channels"


def load_channels(directory: Path | None = None) -> tuple[Channel, ...]:
    """Every channel definition in directory (default: the packaged ones), sorted by id; a bad file names itself."""
    directory = directory or CHANNELS_DIR
    channels = []
    for path in sorted(directory.glob("*.toml")):
        try:
            channels.append(Channel.model_validate(tomllib.loads(path.read_text())))
        except ValueError as exc:
            raise ValueError(f"channel definition {path}: {exc}") from exc
    ids = [c.id for c in channels]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate channel ids in {directory}: {ids}")
    return tuple(sorted(channels, key=lambda c: c.id))
