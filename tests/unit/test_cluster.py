"""The pipeline as a bytewax cluster (erpsync/cluster.py): its place in the cluster, recovery shares, the supervisor."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from bytewax.testing import TestingSink, TestingSource

from erpsync.cluster import Cluster, LocalCluster, ensure_recovery, local_addresses
from erpsync.settings import FlowSettings, Settings

TWO = ("10.0.0.1:2101", "10.0.0.2:2101")


def settings(**flows: object) -> Settings:
    return Settings(flows=FlowSettings.model_validate(flows))


def parts(directory: Path) -> dict[int, int]:
    """Partition index -> partition count, as bytewax recorded them in the part files of `directory`."""
    found = {}
    for path in directory.glob("part-*.sqlite3"):
        with sqlite3.connect(path) as db:
            (index, count), = db.execute("SELECT part_index, part_count FROM parts").fetchall()
        assert path.name == f"part-{index}.sqlite3"
        found[index] = count
    return found


# ----------------------------------------------------------------------------- a process's place


def test_one_process_without_addresses() -> None:
    cluster = Cluster.of(settings(workers=3))
    assert (cluster.processes, cluster.total_workers) == (1, 3)
    assert cluster.cli_kwargs() == {"workers_per_process": 3}  # bytewax runs it as a single process


def test_a_process_of_a_cluster_passes_its_id_and_every_address() -> None:
    cluster = Cluster.of(settings(workers=2, process_id=1, addresses=TWO))
    assert (cluster.processes, cluster.total_workers) == (2, 4)
    assert cluster.cli_kwargs() == {"workers_per_process": 2, "process_id": 1, "addresses": list(TWO)}


@pytest.mark.parametrize("process_id, addresses", [(2, TWO), (1, ())])
def test_an_id_that_is_not_the_index_of_an_address_is_refused(process_id: int, addresses: tuple[str, ...]) -> None:
    # (without addresses, bytewax would run process 1 alone, holding no recovery partition)
    with pytest.raises(ValueError, match=f"ERPSYNC_FLOWS__PROCESS_ID={process_id} .*ERPSYNC_FLOWS__ADDRESSES"):
        Cluster.of(settings(process_id=process_id, addresses=addresses))


def test_local_addresses_are_consecutive_loopback_ports() -> None:
    assert local_addresses(3, 4000) == ("127.0.0.1:4000", "127.0.0.1:4001", "127.0.0.1:4002")


# ----------------------------------------------------------------------------- recovery shares


def test_two_processes_of_two_workers_share_one_directory(tmp_path: Path) -> None:
    p0, p1 = (Cluster(TWO, i, 2) for i in (0, 1))
    assert ensure_recovery(tmp_path, p1) is True
    assert parts(tmp_path) == {1: 4, 3: 4}  # process 1's share first: the count is the cluster's, not the share's
    assert ensure_recovery(tmp_path, p0) is True
    assert parts(tmp_path) == {0: 4, 1: 4, 2: 4, 3: 4}  # disjoint shares; together every partition, once
    created = (tmp_path / "created_ms").read_text()
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("part-*")}
    time.sleep(0.01)
    assert ensure_recovery(tmp_path, p0) is False and ensure_recovery(tmp_path, p1) is False  # created once
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("part-*")} == before
    assert (tmp_path / "created_ms").read_text() == created


def test_processes_on_their_own_volumes_hold_their_share_only(tmp_path: Path) -> None:
    shares = {}
    for i in (0, 1):
        assert ensure_recovery(tmp_path / f"p{i}", Cluster(TWO, i, 2)) is True
        shares[i] = parts(tmp_path / f"p{i}")
    assert shares == {0: {0: 4, 2: 4}, 1: {1: 4, 3: 4}}
    assert ensure_recovery(tmp_path / "p1", Cluster(TWO, 1, 2)) is False  # same id, same volume: it resumes


def test_the_shares_together_are_a_recovery_store_bytewax_resumes_from(tmp_path: Path) -> None:
    union = tmp_path / "union"
    for i in (0, 1):
        ensure_recovery(tmp_path / f"p{i}", Cluster(TWO, i, 2))
    union.mkdir()
    for part in tmp_path.glob("p?/part-*.sqlite3"):
        part.rename(union / part.name)
    flow = Dataflow("shares")
    out: list[int] = []
    op.output("out", op.input("in", flow, TestingSource([1, 2, 3])), TestingSink(out))
    cli_main(flow, workers_per_process=1, recovery_config=RecoveryConfig(union))  # refuses missing or mixed parts
    assert out == [1, 2, 3]


@pytest.mark.parametrize("processes, workers", [(2, 1), (3, 2), (1, 2)])
def test_a_directory_made_for_another_cluster_size_is_refused(tmp_path: Path, processes: int, workers: int) -> None:
    ensure_recovery(tmp_path, Cluster(TWO, 0, 2))  # 2 processes x 2 workers: 4 partitions
    ensure_recovery(tmp_path, Cluster(TWO, 1, 2))
    other = Cluster(local_addresses(processes) if processes > 1 else (), 0, workers)
    refusal = rf"{re.escape(str(tmp_path))} .* 4 workers in all; .* {processes} process\(es\) x {workers} worker"
    with pytest.raises(ValueError, match=refusal):
        ensure_recovery(tmp_path, other)
    assert sorted(parts(tmp_path)) == [0, 1, 2, 3]  # nothing created, nothing removed


def test_a_share_found_in_part_is_refused_not_completed(tmp_path: Path) -> None:
    """2 processes x 1 worker on their own volumes, then 1 process x 2 workers: part 1 is on the other volume.

    Creating it empty would lose the snapshots it held (bytewax would then refuse to resume, calling it "too old").
    """
    ensure_recovery(tmp_path, Cluster(TWO[:2], 0, 1))
    with pytest.raises(ValueError, match=r"partitions \[0\] of its share \[0, 1\].*\[1\]"):
        ensure_recovery(tmp_path, Cluster((), 0, 2))
    assert sorted(parts(tmp_path)) == [0]


def test_a_directory_of_a_single_process_from_before_the_cluster_is_taken_for_its_size(tmp_path: Path) -> None:
    """Recovery made by `erpsync run` before clusters: every part file, no partition count beside them."""
    init_db_dir(tmp_path, 2)
    assert ensure_recovery(tmp_path, Cluster((), 0, 2)) is False
    with pytest.raises(ValueError, match=" 2 workers "):
        ensure_recovery(tmp_path, Cluster(TWO, 0, 2))


# ----------------------------------------------------------------------------- the local supervisor

CHILD = """
import json, os, signal, sys, time
from pathlib import Path
from erpsync.settings import Settings
out = Path(sys.argv[1])
flows = Settings().flows  # as `erpsync run` reads its place in the cluster
me = flows.process_id
runs = out / f"runs-{me}"
runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
(out / f"env-{me}.json").write_text(json.dumps({"id": me, "addresses": flows.addresses}))
# this process's part: "ok", "sleep" (a clean stop on SIGTERM), "hang" (killed by it), "fail<status>[once]"
plan = sys.argv[2].split(",")[me]
if plan != "hang":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
(out / f"ready-{me}").touch()
if plan.startswith("fail") and not (plan.endswith("once") and len(runs.read_text()) > 1):
    while not all((out / f"ready-{i}").exists() for i in range(len(flows.addresses))):  # its peers started
        time.sleep(0.02)
    sys.exit(int(plan[4:].removesuffix("once")))
if plan in ("sleep", "hang"):
    time.sleep(60)
"""


def supervisor(tmp_path: Path, plan: str, *, restart: bool) -> LocalCluster:
    return LocalCluster([sys.executable, "-c", CHILD, str(tmp_path), plan], 2, dict(os.environ), restart=restart,
                        restart_delay_s=0, base_port=3500)


def runs(tmp_path: Path) -> list[int]:
    return [len((tmp_path / f"runs-{i}").read_text()) for i in (0, 1)]


def test_each_child_is_told_its_id_and_every_address(tmp_path: Path) -> None:
    assert supervisor(tmp_path, "ok,ok", restart=False).run() == 0
    for i in (0, 1):
        env = json.loads((tmp_path / f"env-{i}.json").read_text())
        assert env == {"id": i, "addresses": ["127.0.0.1:3500", "127.0.0.1:3501"]}
    assert runs(tmp_path) == [1, 1]


def test_a_child_that_fails_stops_its_peers_and_its_status_is_the_clusters(tmp_path: Path) -> None:
    # process 0 is killed because of process 1: the status says why the cluster stopped (e.g. replay's 4)
    assert supervisor(tmp_path, "hang,fail4", restart=False).run() == 4
    assert runs(tmp_path) == [1, 1]


def test_a_child_that_fails_restarts_the_whole_cluster(tmp_path: Path) -> None:
    assert supervisor(tmp_path, "ok,fail3once", restart=True).run() == 0
    assert runs(tmp_path) == [2, 2]  # both again: the peers of a dead process cannot go on without it


def test_sigterm_is_passed_on_and_nothing_is_restarted(tmp_path: Path) -> None:
    def stop_when_ready() -> None:
        while not all((tmp_path / f"ready-{i}").exists() for i in (0, 1)):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=stop_when_ready, daemon=True).start()
    assert supervisor(tmp_path, "sleep,sleep", restart=True).run() == 0  # both stopped cleanly, within seconds
    assert runs(tmp_path) == [1, 1]
    assert signal.getsignal(signal.SIGTERM) == before  # the supervisor's handler is gone again
