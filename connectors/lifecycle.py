"""Stopping the live pipeline cleanly, and restarting it in-process to re-seed a store.

bytewax ends a dataflow when every input is exhausted, after closing the last epoch (a final
snapshot, every sink flushed and committed). So a stop is a request every source partition sees
(``stop_requested``): it ends its input, and the dataflow drains and snapshots on its own. SIGTERM
and the first Ctrl-C request it; a second Ctrl-C interrupts at once (bytewax then stops without a
final snapshot, and the next start resumes from the previous one, which the sinks' fences make safe).

A sink that waits out an outage polls ``stop_requested`` between attempts, so a stop never waits for
a dependency to come back: it ``abandon``s the run. The process exits at once, as after ``kill -9``:
the epoch in flight is neither snapshotted nor committed (raising from a sink would make bytewax
panic), and the next start resumes from the last snapshot, which the exactly-once Kafka outputs and
the fenced stores make safe.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

log = logging.getLogger(__name__)

_stop = threading.Event()
_reason: list[str] = []
_reseed: set[str] = set()


RESTART = 75  # exit status of a run abandoned to be started again (EX_TEMPFAIL): re-seed a store


def abandon(reason: str) -> NoReturn:
    """Exit now, without a final snapshot (a stop while a sink waits for its store; see the module doc)."""
    status = RESTART if _reseed else 0
    log.warning("stopping without a final snapshot: %s; the next start resumes from the last one", reason)
    logging.shutdown()
    os._exit(status)


def stop_requested() -> bool:
    return _stop.is_set()


def request_stop(reason: str) -> None:
    """End the inputs: the dataflow drains, takes a final snapshot and returns."""
    if not _stop.is_set():
        _reason.append(reason)
        log.info("stopping: %s", reason)
    _stop.set()


def request_reseed(store: str, reason: str) -> None:
    """Stop and start again, re-publishing every current value to `store` (it lost its data)."""
    if store not in _reseed:
        log.warning("%s: %s; restarting the dataflow to re-seed it from the pipeline's state", store, reason)
    _reseed.add(store)
    request_stop(f"re-seeding {store}")


def take_reseed() -> frozenset[str]:
    """The stores to re-seed on the next start (clears the request and the stop)."""
    stores = frozenset(_reseed)
    _reseed.clear()
    _stop.clear()
    _reason.clear()
    return stores


def reseed_pending() -> bool:
    return bool(_reseed)


def reset() -> None:
    """Forget every request (tests, and each `run`)."""
    _stop.clear()
    _reason.clear()
    _reseed.clear()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and the first SIGINT request a clean stop; a second SIGINT interrupts at once."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and _stop.is_set() and not _reseed:
            raise KeyboardInterrupt
        request_stop(f"{name} received; finishing the current epoch (Ctrl-C again to stop at once)")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
