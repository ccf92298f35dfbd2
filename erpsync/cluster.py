"""The pipeline as a bytewax cluster: N processes x M workers, on one host or several.

Each process runs the same dataflow with ``process_id`` and the cluster's ``addresses``; bytewax
spreads the raw topic partitions, the keyed state and the Kafka output parts over all workers and
exchanges records between processes. ``erpsync run --processes N`` starts N local processes under a
small supervisor (``LocalCluster``); in containers each process is started with its own id
(``--process-id I --addresses A,B``, or ERPSYNC_FLOWS__PROCESS_ID / ERPSYNC_FLOWS__ADDRESSES).

Recovery layout (``ensure_recovery``): bytewax keeps snapshots in N x M partitions (SQLite files); the
cluster as a whole must hold every partition, each exactly once. Every process creates its share,
the partitions ``part-k`` with ``k % processes == process_id``, in its recovery directory. So the
processes of one host can share one directory (the shares do not overlap), and processes on
different hosts each keep their own volume: a process restarted with the same id and the same
volume finds its partitions, and the cluster resumes from the last snapshot all of them completed.
The cluster's size (processes x workers) is fixed for its recovery directories: ``ensure_recovery``
refuses a directory made for another size.
If one process dies, the others fail too (their peer is gone) and their supervisors start them
again; they meet again at their addresses and resume together.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from erpsync.settings import Settings

log = logging.getLogger(__name__)
BASE_PORT = 2101  # bytewax's conventional first cluster port


@dataclass(frozen=True)
class Cluster:
    """A process's place in the cluster."""

    addresses: tuple[str, ...]
    process_id: int
    workers_per_process: int

    @classmethod
    def of(cls, settings: Settings) -> Cluster:
        f = settings.flows
        cluster = cls(tuple(f.addresses), f.process_id, f.workers)
        if not 0 <= cluster.process_id < cluster.processes:  # without addresses: one process, id 0
            ids = f"ids 0 to {len(f.addresses) - 1}" if f.addresses else "none given: a single process, id 0"
            raise ValueError(f"ERPSYNC_FLOWS__PROCESS_ID={cluster.process_id} is not the index of an address in "
                             f"ERPSYNC_FLOWS__ADDRESSES ({ids})")
        return cluster

    @property
    def processes(self) -> int:
        return len(self.addresses) or 1

    @property
    def total_workers(self) -> int:
        return self.processes * self.workers_per_process

    def cli_kwargs(self) -> dict[str, object]:
        """bytewax.run.cli_main's cluster arguments."""
        if not self.addresses:
            return {"workers_per_process": self.workers_per_process}
        return {"workers_per_process": self.workers_per_process, "process_id": self.process_id,
                "addresses": list(self.addresses)}


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_recovery(directory: Path, cluster: Cluster) -> bool:
    """Create this process's share of the recovery partitions if it has none; True when it created them.

    The partition count (all processes x workers) is fixed when the first process creates its share:
    a later process finds the count in ``partitions`` beside them (a directory from before clusters
    has part files only: one process held them all). Refused, with the reason: a directory made for
    another cluster size (the dataflow is laid out for its worker count: sequencing fences address
    each worker; resuming at another size is not built), and one holding only part of this process's
    share (the rest is in another process's directory: creating it empty would lose its snapshots,
    and bytewax would refuse to resume later, naming partitions "too old").
    """
    from bytewax.recovery import init_db_dir  # noqa: PLC0415 - bytewax only where flows run

    with _locked(directory):
        count_file = directory / "partitions"
        found = len(list(directory.glob("part-*.sqlite3")))
        count = int(count_file.read_text()) if count_file.exists() else found or cluster.total_workers
        if count != cluster.total_workers:
            raise ValueError(
                f"recovery directory {directory} was made for a cluster of {count} workers in all; this one has "
                f"{cluster.processes} process(es) x {cluster.workers_per_process} worker(s) = {cluster.total_workers}. "
                "Start it with its former size, or with new recovery directories (the pipeline then reads its "
                "topics again from the start)")
        mine = [k for k in range(count) if k % cluster.processes == cluster.process_id]
        present = [k for k in mine if (directory / f"part-{k}.sqlite3").exists()]
        if present == mine:
            return False
        if present:
            raise ValueError(
                f"recovery directory {directory} holds partitions {present} of its share {mine} (process "
                f"{cluster.process_id} of {cluster.processes}), not {sorted(set(mine) - set(present))}: they are in "
                "another process's directory. Start the cluster with the processes and directories it had, or with "
                "new recovery directories")
        count_file.write_text(str(count))  # before the parts: part files without it are a single process's
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            init_db_dir(Path(tmp), count)
            for k in mine:
                shutil.move(str(Path(tmp) / f"part-{k}.sqlite3"), directory / f"part-{k}.sqlite3")
        created = directory / "created_ms"
        if not created.exists():
            created.write_text(str(int(time.time() * 1000)))
        log.info("recovery partitions %s of %d created in %s", mine, count, directory)
        return True


def local_addresses(processes: int, base_port: int = BASE_PORT) -> tuple[str, ...]:
    return tuple(f"127.0.0.1:{base_port + i}" for i in range(processes))


class LocalCluster:
    """N local processes of one command, started again together when one of them dies.

    ``erpsync run --processes N``: each child is ``erpsync run`` with its process id and the cluster's
    addresses in its environment. A child that exits with an error takes the cluster down (its peers
    cannot go on without it); they are all started again after ``restart_delay_s``, and resume from the
    last snapshot. SIGTERM and Ctrl-C are passed on to the children, which stop cleanly; a second
    Ctrl-C stops them at once.
    """

    def __init__(self, argv: Sequence[str], processes: int, env: dict[str, str], *, restart: bool = True,
                 restart_delay_s: float = 2.0, base_port: int = BASE_PORT) -> None:
        self.argv, self.processes, self.env = list(argv), processes, env
        self.restart, self.restart_delay_s = restart, restart_delay_s
        self.addresses = local_addresses(processes, base_port)
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def _start(self) -> None:
        import json  # noqa: PLC0415

        self.children = []
        for i in range(self.processes):
            env = dict(self.env, ERPSYNC_FLOWS__PROCESS_ID=str(i), ERPSYNC_FLOWS__ADDRESSES=json.dumps(self.addresses))
            self.children.append(subprocess.Popen(self.argv, env=env))
        log.info("started %d processes (pids %s) at %s", self.processes,
                 ", ".join(str(c.pid) for c in self.children), ", ".join(self.addresses))

    def _signal_all(self, signum: int) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)

    def run(self) -> int:
        def on_signal(signum: int, frame: object) -> None:
            if self.stopping and signum == signal.SIGINT:
                self._signal_all(signal.SIGKILL)
                return
            self.stopping = True
            self._signal_all(signum)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                self._start()
                status = self._wait()
                if self.stopping or status == 0 or not self.restart:
                    return status
                log.warning("a process of the cluster exited with %d: restarting all %d in %.0f s", status,
                            self.processes, self.restart_delay_s)
                time.sleep(self.restart_delay_s)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _wait(self) -> int:
        """Until every child has exited; the first failure stops the others and is the exit status."""
        first = 0
        while any(c.poll() is None for c in self.children):
            for child in self.children:
                code = child.poll()
                if code not in (None, 0) and not self.stopping and not first:
                    first = code  # not the statuses of the peers stopped because of it
                    self._signal_all(signal.SIGTERM)  # its peers cannot go on without it
                    deadline = time.monotonic() + 20
                    while any(c.poll() is None for c in self.children) and time.monotonic() < deadline:
                        time.sleep(0.2)
                    self._signal_all(signal.SIGKILL)
            time.sleep(0.2)
        codes = [child.wait() for child in self.children]
        return first or next((code for code in codes if code != 0), 0)


def child_argv(args: Sequence[str]) -> list[str]:
    """The command line of a child process: the same interpreter and module."""
    return [sys.executable, "-m", "erpsync", *args]


def child_env() -> dict[str, str]:
    return dict(os.environ)
