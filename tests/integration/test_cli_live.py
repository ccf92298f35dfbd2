"""The command line on the real stack: progress of long commands, the channel directory setting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from erpsync.channels import CHANNELS_DIR
from erpsync.settings import Settings

from .conftest import Pipeline


def erpsync(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "erpsync", *args], capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, "ERPSYNC_CLI__PROGRESS_INTERVAL_S": "1", **env})


def progress(stderr: str) -> list[str]:
    return [line.split("erpsync.progress: ", 1)[1] for line in stderr.splitlines() if "erpsync.progress: " in line]


def test_simulate_shows_orders_finished_and_drains(pipeline: Pipeline, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    result = erpsync("simulate", "--orders", "4", "--rate", "20", "--seed", "5", "--fault-rate", "0",
                     "--timeout", "240", "--manifest", str(manifest))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = progress(result.stderr)
    assert any(" of 4 orders finished (" in line for line in lines), result.stderr
    assert lines[-1].startswith("simulate: 4 orders finished in "), lines
    assert json.loads(manifest.read_text())["drained"] is True
    assert "  drained" in result.stdout


def test_capture_fixtures_shows_its_steps(pipeline: Pipeline, tmp_path: Path) -> None:
    result = erpsync("capture-fixtures", "--output", str(tmp_path / "fixtures"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = progress(result.stderr)
    assert any("reading erp topics ..." in line for line in lines), lines
    assert lines[-1].startswith("capture-fixtures: 5 steps in "), lines
    assert (tmp_path / "fixtures" / "erp.jsonl").read_text().count("\n") > 20


def test_reconcile_reads_the_channel_directory_setting(settings: Settings, tmp_path: Path) -> None:
    channels = tmp_path / "channels"
    channels.mkdir()
    shutil.copy(CHANNELS_DIR / "marketplace.toml", channels)
    result = erpsync("reconcile", "--skus", "NO-SUCH-SKU-%", "--orders", "NO-SUCH-ORDER-%", "--json", "--no-store",
                     ERPSYNC_FLOWS__CHANNELS_DIR=str(channels))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert json.loads(result.stdout)["scope"]["channels"] == ["marketplace"]
    default = erpsync("reconcile", "--skus", "NO-SUCH-SKU-%", "--orders", "NO-SUCH-ORDER-%", "--json", "--no-store")
    assert json.loads(default.stdout)["scope"]["channels"] == ["b2b-portal", "inside-sales", "marketplace"]
