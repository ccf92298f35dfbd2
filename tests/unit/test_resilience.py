"""Sinks that wait out outages (connectors.resilience) and stop when asked (connectors.lifecycle)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from connectors import lifecycle
from connectors.resilience import HEALTH, Health, guarded, one_line
from erpsync.settings import Settings


@pytest.fixture(autouse=True)
def fresh_lifecycle() -> Iterator[None]:
    lifecycle.reset()
    yield
    lifecycle.reset()


def test_a_transient_failure_is_retried_until_the_store_is_back() -> None:
    calls = {"n": 0}
    dropped = []

    def write() -> str:
        calls["n"] += 1
        if calls["n"] < 4:
            raise redis.ConnectionError("Connection refused")
        return "written"

    assert guarded("redis-test", write, drop=lambda: dropped.append(1), max_wait_s=0.01) == "written"
    assert calls["n"] == 4 and len(dropped) == 3  # a broken connection is dropped before each retry
    assert HEALTH.sinks["redis-test"].up and HEALTH.sinks["redis-test"].failures == 3


def test_a_refused_record_is_not_retried() -> None:
    calls = {"n": 0}

    def write() -> None:
        calls["n"] += 1
        raise psycopg.errors.UntranslatableCharacter("invalid byte sequence 0x00")

    with pytest.raises(psycopg.errors.UntranslatableCharacter):
        guarded("ops-test", write, max_wait_s=0.01)
    assert calls["n"] == 1


def test_a_stop_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []

    def exit_now(status: int) -> None:
        exits.append(status)
        raise SystemExit(status)

    monkeypatch.setattr(lifecycle.os, "_exit", exit_now)

    def write() -> None:
        raise psycopg.OperationalError("connection refused")

    threading.Timer(0.2, lambda: lifecycle.request_stop("test")).start()
    with pytest.raises(SystemExit):
        guarded("ops-wait", write, max_wait_s=0.05)
    assert exits == [0]  # a stop: the run is abandoned, no snapshot of the epoch in flight


def test_lost_tables_ask_for_a_reseed(monkeypatch: pytest.MonkeyPatch) -> None:
    def exit_now(status: int) -> None:
        raise SystemExit(status)

    monkeypatch.setattr(lifecycle.os, "_exit", exit_now)

    def write() -> None:
        raise psycopg.errors.UndefinedTable('relation "sync.availability" does not exist')

    with pytest.raises(SystemExit) as stopped:
        guarded("ops-lost", write, max_wait_s=0.01)
    assert stopped.value.code == lifecycle.RESTART  # started again by its supervisor, which re-seeds
    assert lifecycle.take_reseed() == frozenset({"ops-db"})
    assert not lifecycle.stop_requested()  # taken: the next run starts clean


def test_health_is_written_for_stack_status_and_says_why(tmp_path: Path) -> None:
    health = Health()
    health.configure(Settings(), tmp_path / "health.json")
    health.failed("redis", redis.ConnectionError("Error 111 connecting to 127.0.0.1:16379.\nConnection refused."))
    doc = json.loads((tmp_path / "health.json").read_text())
    assert doc["sinks"]["redis"]["up"] is False
    assert doc["sinks"]["redis"]["error"] == "Error 111 connecting to 127.0.0.1:16379. Connection refused."
    health.ok("redis")
    assert json.loads((tmp_path / "health.json").read_text())["sinks"]["redis"]["up"] is True


def test_one_line_errors() -> None:
    assert one_line(ValueError("a\n  b\tc")) == "a b c"
    assert one_line(ValueError("")) == "ValueError"
