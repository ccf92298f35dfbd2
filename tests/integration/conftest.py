"""Fixtures for tests against the real local stack (`make test` runs `erpsync stack up` first).

A stack that is not up is a failure, never a skip.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pymysql
import pytest
from confluent_kafka import Consumer, Message

from erpsync import stack
from erpsync.settings import Settings, load_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def settings() -> Settings:
    s = load_settings()
    unhealthy = [row for row in stack.status(s) if row["state"] != "healthy"]
    if unhealthy:
        pytest.fail(f"the local stack is not up (run `erpsync stack up`): {unhealthy}")
    return s


@pytest.fixture
def erp(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    e = settings.erp
    with psycopg.connect(
        host=e.host, port=e.port, dbname=e.dbname, user=e.user,
        password=e.password.get_secret_value(), autocommit=True,
    ) as conn:
        yield conn


@pytest.fixture
def wms(settings: Settings) -> Iterator[pymysql.connections.Connection]:
    w = settings.wms
    conn = pymysql.connect(
        host=w.host, port=w.port, user=w.user, password=w.password.get_secret_value(),
        database=w.dbname, autocommit=True,
    )
    try:
        yield conn
    finally:
        conn.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class TopicReader:
    """Reads one topic from the beginning, keeping every record, JSON-decoded."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": unique("test"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 1000,
        })
        self.consumer.subscribe([topic])
        self.records: list[tuple[Any, Any, int]] = []

    def _poll(self) -> None:
        msg: Message | None = self.consumer.poll(0.5)
        if msg is None or msg.error():
            return
        key = json.loads(msg.key()) if msg.key() else None
        value = json.loads(msg.value()) if msg.value() else None
        self.records.append((key, value, msg.offset()))

    def wait_for(self, match: Callable[[Any, Any], bool], timeout_s: float = 30.0) -> tuple[Any, Any, int]:
        """The first record (key, value, offset) matching, read within timeout_s; else fail."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for rec in self.records[seen:]:
                if match(rec[0], rec[1]):
                    return rec
            seen = len(self.records)
            if time.monotonic() > deadline:
                pytest.fail(f"no matching record on {self.topic} within {timeout_s}s "
                            f"({len(self.records)} records read)")
            self._poll()

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def topic_reader(settings: Settings) -> Iterator[Callable[[str], TopicReader]]:
    readers: list[TopicReader] = []

    def make(topic: str) -> TopicReader:
        reader = TopicReader(settings, topic)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()
