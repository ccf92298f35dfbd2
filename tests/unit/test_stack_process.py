"""Process helpers of the local stack."""

from __future__ import annotations

import os
from pathlib import Path

from erpsync.stack.process import read_pid


def test_a_pid_file_naming_another_program_is_stale(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    pid_file.write_text(str(os.getpid()))
    assert read_pid(pid_file, "python") == os.getpid()
    assert read_pid(pid_file, "redis-server") is None  # our pid, but not a Redis: not ours to kill
    pid_file.write_text("999999999")
    assert read_pid(pid_file) is None


def test_kafka_cluster_ids_never_read_as_an_option() -> None:
    from erpsync.stack.components import kafka_cluster_id  # noqa: PLC0415

    ids = [kafka_cluster_id() for _ in range(5000)]  # a leading "-" came one time in 64
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids) and all(len(i) == 22 for i in ids)
