"""How a keyed step's key and state are held at rest, and snapshotted: pickled, then zstd-compressed.

A distributor has millions of SKU and order keys, each resting for long stretches between changes
(``flows.sequencing``). Their pickles are small (a few hundred bytes to a kilobyte) and alike: the
same class paths, field names, topic names, channel ids, status words. zstd compresses such small,
alike records well only with a dictionary of what they share, so the packing uses a fixed one,
shipped with the code (``packing-1.zdict``, trained by ``python -m bench.packing_dictionary``).

Format: the first byte says how the rest is packed.

- ``0x80``: a plain pickle (protocol 2 and later start with it): snapshots taken before compression.
- ``0x01``: a zstd frame compressed with dictionary 1.

A dictionary, once shipped, never changes: snapshots in a recovery store must stay readable. A
better dictionary is a new file and a new format byte, and `unpack` keeps reading every older one.
Compression and decompression are deterministic; a state unpacked equals the one packed.
"""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import zstandard

PICKLE = 0x80
ZSTD_1 = 0x01
LEVEL = 3  # (level 1 to 3 cost the same on records this small; 3 packs a few percent tighter)
_DICTIONARY_1 = zstandard.ZstdCompressionDict(Path(__file__).with_name("packing-1.zdict").read_bytes())
_DICTIONARY_1.precompute_compress(level=LEVEL)


class _Codecs(threading.local):
    """One compressor and decompressor per thread (bytewax workers are threads; zstd contexts are not shared)."""

    def __init__(self) -> None:
        self.compress = zstandard.ZstdCompressor(level=LEVEL, dict_data=_DICTIONARY_1, write_checksum=False,
                                                 write_content_size=True, write_dict_id=False).compress
        self.decompress = zstandard.ZstdDecompressor(dict_data=_DICTIONARY_1).decompress


_codecs = _Codecs()


def pack(obj: Any) -> bytes:
    """`obj` pickled and compressed with the current dictionary."""
    return bytes((ZSTD_1,)) + _codecs.compress(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def unpack(data: bytes) -> Any:
    """What `pack` (or an older format) packed. Only our own snapshots come here, never outside input."""
    kind = data[0]
    if kind == ZSTD_1:
        return pickle.loads(_codecs.decompress(memoryview(data)[1:]))  # noqa: S301 - our own snapshot
    if kind == PICKLE:
        return pickle.loads(data)  # noqa: S301 - our own snapshot, from before compression
    raise ValueError(f"a packed state of unknown format {kind:#04x}: written by a newer erpsync?")
