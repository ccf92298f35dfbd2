"""Progress of long work: a live bar on a terminal, a periodic log line otherwise.

The work reports through a narrow hook: ``tracker.advance(n)`` (n more records, events, steps)
or ``tracker.update(completed=..., note=...)``. On a terminal (stderr) rich draws a bar with the
count, the rate and the time left; when stderr is not a terminal (CI, a log file) a line like
``replay: 120,000 of 300,000 records (40%), 3,850 records/s, about 47 s left`` is logged every
``interval_s``, and a last line says how long the whole took. stdout stays free for results.

``counting_source`` wraps a bytewax input so that every batch it reads advances a tracker.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from bytewax.inputs import FixedPartitionedSource

X = TypeVar("X")
S = TypeVar("S")

log = logging.getLogger(__name__)
# Progress lines are the point of a long command even when other logging is quiet.
log.setLevel(logging.INFO)

Hook = Callable[[int], None]


class Tracker:
    """Counts work done; read by a renderer thread. Thread-safe enough for one writer (GIL)."""

    def __init__(self, what: str, total: float | None, unit: str, *, rated: bool = True) -> None:
        self.what, self.total, self.unit, self.rated = what, total, unit, rated
        self.completed = 0.0
        self.note = ""
        self.started = time.monotonic()
        self._samples: deque[tuple[float, float]] = deque(maxlen=64)

    def advance(self, n: float = 1) -> None:
        self.completed += n

    def update(self, *, completed: float | None = None, total: float | None = None, note: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note

    def rate(self) -> float | None:
        """Units per second over about the last 30 seconds (None before there is anything to measure)."""
        now = time.monotonic()
        self._samples.append((now, self.completed))
        while len(self._samples) > 2 and now - self._samples[0][0] > 30:
            self._samples.popleft()
        t0, c0 = self._samples[0]
        if now - t0 < 0.5:
            t0, c0 = self.started, 0.0
        elapsed = now - t0
        return (self.completed - c0) / elapsed if elapsed > 0.5 else None

    def line(self) -> str:
        """One progress line: done, share, rate, time left, note."""
        parts = [f"{self.what}: {_count(self.completed)}"
                 + (f" of {_count(self.total)} {self.unit}" if self.total else f" {self.unit}")]
        if self.total:
            parts[0] += f" ({100 * min(1.0, self.completed / self.total):.0f}%)"
        rate = self.rate() if self.rated else None
        if not self.rated:
            parts.append(f"{_duration(time.monotonic() - self.started)} elapsed")
        if rate is not None:
            parts.append(f"{_count(rate)} {self.unit}/s")
            if self.total and rate > 0:
                parts.append(f"about {_duration((self.total - self.completed) / rate)} left")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts)

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = (f" ({_count(self.completed / elapsed)} {self.unit}/s)"
                if self.rated and elapsed > 0 and self.completed else "")
        note = f"; {self.note}" if self.note else ""
        return f"{self.what}: {_count(self.completed)} {self.unit} in {_duration(elapsed)}{rate}{note}"


def _count(n: float) -> str:
    return f"{n:,.0f}" if n >= 10 or n == int(n) else f"{n:.1f}"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@contextmanager
def track(what: str, total: float | None = None, *, unit: str = "records", interval_s: float = 10.0,
          terminal: bool | None = None) -> Iterator[Tracker]:
    """Show the progress of the work done inside the block (see the module docstring).

    terminal: draw a bar (True), log lines (False), or decide by whether stderr is a terminal.
    Work counted in "steps" of uneven length shows the elapsed time instead of a rate and an ETA.
    """
    tracker = Tracker(what, total, unit, rated=unit != "steps")
    if terminal is None:
        terminal = sys.stderr.isatty()
    stop = threading.Event()
    if terminal:
        renderer = threading.Thread(target=_draw, args=(tracker, stop), name=f"progress-{what}", daemon=True)
    else:
        renderer = threading.Thread(target=_log_lines, args=(tracker, stop, interval_s), name=f"progress-{what}",
                                    daemon=True)
    renderer.start()
    ok = False
    try:
        yield tracker
        ok = True
    finally:
        stop.set()
        renderer.join(5)
        if ok:
            _say(tracker.summary())


def _say(text: str) -> None:
    """A log line when logging is set up (the command line), else straight to stderr (a library caller)."""
    if log.hasHandlers() and logging.getLogger().handlers:
        log.info("%s", text)
    else:
        print(text, file=sys.stderr, flush=True)


def _log_lines(tracker: Tracker, stop: threading.Event, interval_s: float) -> None:
    while not stop.wait(interval_s):
        _say(tracker.line())


def _draw(tracker: Tracker, stop: threading.Event) -> None:
    from rich.console import Console  # noqa: PLC0415 - only on a terminal
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn  # noqa: PLC0415

    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.fields[line]}"))
    with Progress(*columns, console=Console(stderr=True), transient=True, refresh_per_second=4) as bar:
        task = bar.add_task(tracker.what, total=tracker.total, line="")
        while True:
            stopping = stop.wait(0.25)
            line = tracker.line().split(": ", 1)[1]
            bar.update(task, completed=tracker.completed, total=tracker.total, line=line)
            if stopping:
                break


def counting_source(source: FixedPartitionedSource[X, S], hook: Hook,
                    counts: Callable[[Any], bool] = lambda item: True) -> FixedPartitionedSource[X, S]:
    """The bytewax input source, calling hook(n) for every batch with n items that `counts`."""
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition  # noqa: PLC0415 - replay only

    class _Counted(StatefulSourcePartition[Any, Any]):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def next_batch(self) -> Any:
            batch = self.inner.next_batch()
            hook(sum(1 for item in batch if counts(item)))
            return batch

        def next_awake(self) -> Any:
            return self.inner.next_awake()

        def snapshot(self) -> Any:
            return self.inner.snapshot()

        def close(self) -> None:
            self.inner.close()

    class _CountedSource(FixedPartitionedSource[X, S]):
        def list_parts(self) -> list[str]:
            return list(source.list_parts())

        def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _Counted:
            return _Counted(source.build_part(step_id, for_part, resume_state))

    return _CountedSource()
