"""The rate limit on client logs: a burst is cut to a few lines, and what was cut is counted and said."""

from __future__ import annotations

import logging

import pytest

from erpsync.logs import RateLimitFilter


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger("tests.ratelimit")
    log.filters.clear()
    log.propagate = True
    return log


def test_a_burst_is_cut_and_the_cut_is_reported(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    limit = RateLimitFilter("3/hour")
    logger.addFilter(limit)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for n in range(100):
            logger.error("connect to broker %d failed", n)
    assert [r.getMessage() for r in caplog.records] == [f"connect to broker {n} failed" for n in range(3)]
    assert (limit.passed, limit.suppressed) == (3, 97)


def test_levels_have_their_own_budget_and_the_next_line_says_how_many_were_cut(
        logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    limit = RateLimitFilter("2/hour")
    logger.addFilter(limit)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for _ in range(5):
            logger.error("down")
        logger.warning("slow")
        limit.limiter.storage.reset()  # a new window
        logger.error("still down")
    assert [r.getMessage() for r in caplog.records] == [
        "down", "down", "slow", "still down (3 similar lines suppressed)"]
