"""The pipeline as a cluster of 2 processes on the local stack (issue 15): one process killed with
``kill -9`` while orders stream; the local supervisor (``erpsync run --processes 2``) starts the cluster
again, it resumes from the last snapshot every process completed, and ``erpsync reconcile`` then finds
nothing lost or doubled: ATS, order statuses, ERP intake rows, no record read twice."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from erpsync.settings import Settings
from schemas.registry import SchemaRegistry

from .faults import Supervised
from .test_faults import check, workload_with

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    run = Supervised(tmp_path_factory.mktemp("cluster"), "--processes", "2",
                     ERPSYNC_FLOWS__SNAPSHOT_INTERVAL_S="1").start()
    yield run
    run.stop()


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_kill_9_of_one_process_loses_and_doubles_nothing(cluster: Supervised, settings: Settings,
                                                          registry: SchemaRegistry) -> None:
    parent = cluster.pipeline.proc
    assert parent is not None
    deadline = time.monotonic() + 60
    while len(children(parent.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    first = children(parent.pid)
    assert len(first) == 2, cluster.log_text[-3000:]
    killed: list[int] = []

    def kill_one() -> None:
        time.sleep(3)
        os.kill(first[1], signal.SIGKILL)  # process 1; the supervisor takes the cluster down and up
        killed.append(first[1])

    manifest, since_ms, _ = workload_with(settings, kill_one, seed=41)
    check(settings, registry, cluster, manifest, since_ms)
    assert killed and set(children(parent.pid)).isdisjoint(first), "both processes were started again"
    assert "restarting all 2" in cluster.log_text, cluster.log_text[-3000:]
