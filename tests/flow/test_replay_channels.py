"""`erpsync replay` applies each channel's outputs as the live pipeline does: verify a channel offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from erpsync.channels import CHANNELS_DIR, load_channels
from erpsync.runner import replay
from erpsync.settings import Settings
from schemas.registry import SchemaRegistry

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "debezium"


def test_replay_applies_format_kafka_and_redis_switches(tmp_path: Path, registry: SchemaRegistry) -> None:
    channels = tmp_path / "channels"
    shutil.copytree(CHANNELS_DIR, channels)
    (channels / "storefront.toml").write_text('id = "storefront"\n[outputs]\nformat = "json"\nredis = false\n')
    (channels / "hidden.toml").write_text('id = "hidden"\n[outputs]\nkafka = false\n')
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes((FIXTURES / "erp.jsonl").read_bytes() + (FIXTURES / "wms.jsonl").read_bytes())
    out = tmp_path / "out.jsonl"
    counts = replay(Settings(), registry, dump, out, channels=load_channels(channels))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    topics = {d["topic"] for d in lines}
    assert "availability.hidden" not in topics and "order-status.hidden" not in topics  # kafka = false
    assert "redis:ats:hidden" in topics and "redis:ats:storefront" not in topics and "redis:ats:b2b-portal" in topics
    storefront = [d for d in lines if d["topic"] == "availability.storefront"]
    assert storefront and all(d["format"] == "json" and isinstance(d["value"]["ats"], int) for d in storefront)
    assert all("format" not in d for d in lines if d["topic"] == "availability.b2b-portal")
    # the Redis value is what storefronts read, the channel's ATS as a base-10 string
    finals = {d["key"]: d["value"] for d in lines if d["topic"] == "redis:ats:b2b-portal"}
    published = {d["key"]: d["value"]["ats"] for d in lines if d["topic"] == "availability.b2b-portal"}
    assert finals == {k: str(v) for k, v in published.items()}
    assert counts["redis:ats:hidden"] == sum(1 for d in lines if d["topic"] == "redis:ats:hidden")


def test_the_command_replays_the_configured_channels(tmp_path: Path) -> None:
    channels = tmp_path / "channels"
    channels.mkdir()
    (channels / "hidden.toml").write_text('id = "hidden"\n[outputs]\nkafka = false\n')
    result = subprocess.run([sys.executable, "-m", "erpsync", "replay", "--input", str(FIXTURES / "wms.jsonl"),
                             "--output", str(tmp_path / "out.jsonl")], capture_output=True, text=True, check=False,
                            env={**os.environ, "ERPSYNC_FLOWS__CHANNELS_DIR": str(channels)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "redis:ats:hidden" in result.stdout and "availability." not in result.stdout
