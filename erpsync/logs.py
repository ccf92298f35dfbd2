"""Client logs that cannot flood: librdkafka's log lines and errors pass through a rate limit.

During a broker outage every Kafka client of the pipeline (a consumer per input partition, the
producers, admin clients) reports each failed connection attempt: about 350 lines a second
before this limit. All of them log through one logger, ``erpsync.kafka.client``, whose filter lets
a few records through per window and counts the rest; the next record let through says how many
were suppressed, so nothing disappears without a trace.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

KAFKA_CLIENT_LOGGER = "erpsync.kafka.client"
# A burst of 5 lines, then at most one line every 2 s on average, per logger and level.
KAFKA_CLIENT_LOG_RATE = "5/10 seconds"


class RateLimitFilter(logging.Filter):
    """Lets at most `rate` records through per logger name and level (limits' fixed window)."""

    def __init__(self, rate: str) -> None:
        super().__init__()
        self.limit: RateLimitItem = parse(rate)
        self.limiter = FixedWindowRateLimiter(MemoryStorage())
        self.passed = 0
        self.suppressed = 0  # in total, for tests and metrics
        self._pending: dict[tuple[str, int], int] = {}  # suppressed since the last record let through
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno)
        with self._lock:
            if not self.limiter.hit(self.limit, record.name, str(record.levelno)):
                self.suppressed += 1
                self._pending[key] = self._pending.get(key, 0) + 1
                return False
            self.passed += 1
            skipped = self._pending.pop(key, 0)
        if skipped:
            record.msg = f"{record.getMessage()} ({skipped} similar lines suppressed)"
            record.args = None
        return True


@functools.cache
def kafka_client_logger() -> logging.Logger:
    """The logger every confluent-kafka client of erpsync logs through (``logger`` in its config)."""
    logger = logging.getLogger(KAFKA_CLIENT_LOGGER)
    logger.addFilter(RateLimitFilter(KAFKA_CLIENT_LOG_RATE))
    return logger


def kafka_client_error(err: Any, *, user: str = "") -> None:
    """The error callback of every client: the same rate-limited logger (a KafkaError names the broker).

    A failed login is an error that names the user, so a wrong password is one actionable line.
    """
    from confluent_kafka import KafkaError  # noqa: PLC0415 - only clients call back

    if err.code() == KafkaError._AUTHENTICATION:
        kafka_client_logger().error("kafka: authentication as user %r failed: %s; check ERPSYNC_KAFKA__USER/PASSWORD",
                                    user, err.str())
    else:
        kafka_client_logger().warning("kafka client error: %s", err)
