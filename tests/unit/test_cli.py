"""The command line as a person meets it: `erpsync ...` in a subprocess, its exit status and stderr.

Every error is one line (no traceback, no usage block) and its exit status says what kind of
problem it is: 2 usage, 3 a system unreachable, 4 data or configuration. Unreachable systems are
real: every endpoint points at a port nothing listens on.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.make_dump import generate
from erpsync import __version__
from erpsync.channels import CHANNELS_DIR

ROOT = Path(__file__).resolve().parents[2]
DUMP = ROOT / "tests" / "fixtures" / "debezium" / "erp.jsonl"


def erpsync(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "erpsync", *args], capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, **env}, cwd=ROOT)


def one_line_error(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> str:
    """The error line, after checking the status, that it is stderr's only line, and its content."""
    lines = result.stderr.splitlines()
    assert result.returncode == status, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_version() -> None:
    result = erpsync("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"erpsync {__version__}"


# ----------------------------------------------------------------------------- usage errors: 2


def test_missing_input_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dump.jsonl"
    one_line_error(erpsync("replay", "--input", str(missing), "--output", str(tmp_path / "out.jsonl")), 2,
                   "erpsync replay: --input", str(missing), "no such file")


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path: Path, how: str) -> None:
    source = tmp_path / "dump.jsonl"
    shutil.copy(DUMP, source)
    target = {"same path": source, "symlink": tmp_path / "link.jsonl", "hard link": tmp_path / "hard.jsonl"}[how]
    if how == "symlink":
        target.symlink_to(source)
    elif how == "hard link":
        os.link(source, target)
    result = erpsync("replay", "--input", str(source), "--output", str(target), timeout=30)
    one_line_error(result, 2, "is the same file as --input", "would read its own output forever")
    assert source.read_bytes() == DUMP.read_bytes()  # not truncated


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_workers_must_be_a_positive_number(tmp_path: Path, workers: str) -> None:
    one_line_error(erpsync("replay", "--input", str(DUMP), "--output", str(tmp_path / "o"), "--workers", workers), 2,
                   "argument --workers")
    assert not (tmp_path / "o").exists()


def test_output_in_a_missing_directory(tmp_path: Path) -> None:
    one_line_error(erpsync("replay", "--input", str(DUMP), "--output", str(tmp_path / "nope" / "out.jsonl")), 2,
                   "directory", "does not exist")


@pytest.mark.parametrize("since", ["1' OR 1=1", "yesterday", "99999999999999999999", "2026-13-45"])
def test_exceptions_since_must_be_a_time(since: str) -> None:
    # (it is checked before any database is asked: the ops database may well be down here)
    one_line_error(erpsync("exceptions", "list", "--since", since, ERPSYNC_OPS__PORT=str(closed_port())), 2,
                   "erpsync exceptions list: argument --since")


@pytest.mark.parametrize("args", [
    ["bogus"], ["replay", "--input", str(DUMP)], ["stack"], ["exceptions", "list", "--limit", "0"],
    ["simulate", "--fault-rate", "2"], ["demo", "--orders", "0"], ["stack", "logs", "-n", "-3"],
    ["reconcile", "--since", "soon"], ["simulate", "--tag", "not a tag"],
])
def test_usage_errors_are_one_line(args: list[str]) -> None:
    one_line_error(erpsync(*args, ERPSYNC_ERP__PORT=str(closed_port())), 2, "erpsync")


def test_verbose_is_accepted_anywhere(tmp_path: Path) -> None:
    for args in (["-v", "replay", "--input", str(DUMP)], ["replay", "-v", "--input", str(DUMP)],
                 ["replay", "--input", str(DUMP), "-v"]):
        result = erpsync(*args, "--output", str(tmp_path / "out.jsonl"))
        assert result.returncode == 0, (args, result.stderr[-2000:])
        assert "INFO schemas.registry" in result.stderr  # -v is (debug) logging wherever it stands
    quiet = erpsync("replay", "--input", str(DUMP), "--output", str(tmp_path / "out.jsonl"))
    assert quiet.returncode == 0 and "schemas.registry" not in quiet.stderr
    result = erpsync("exceptions", "-v", "list", "--since", "x")
    assert result.returncode == 2 and "--since" in result.stderr


# ----------------------------------------------------------------------------- data and configuration: 4


@pytest.fixture
def channels_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "channels"
    shutil.copytree(CHANNELS_DIR, directory)
    return directory


@pytest.mark.parametrize(("change", "expected"), [
    (lambda t: t.replace('["DC-EAST"]', '["DC-EAT"]'), "key 'locations': unknown location 'DC-EAT'"),
    (lambda t: t.replace("share = 0.8", "share = 8"), "key 'share': Input should be less than or equal to 1"),
    (lambda t: t.replace("share = 0.8", "shrae = 0.8"), "key 'shrae': not a channel setting"),
    (lambda t: t.replace("share = 0.8", "share = = 0.8"), "not valid TOML"),
])
def test_a_bad_channel_file_is_one_line_naming_file_and_key(tmp_path: Path, channels_dir: Path, change,  # type: ignore[no-untyped-def]
                                                            expected: str) -> None:
    path = channels_dir / "marketplace.toml"
    path.write_text(change(path.read_text()))
    one_line_error(erpsync("replay", "--input", str(DUMP), "--output", str(tmp_path / "out.jsonl"),
                           ERPSYNC_FLOWS__CHANNELS_DIR=str(channels_dir)), 4, f"channel definition {path}: ", expected)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("command", [["run"], ["reconcile"], ["demo"], ["simulate"]])
def test_commands_that_use_channels_check_them_first(channels_dir: Path, command: list[str]) -> None:
    # (before any system is asked: they are all unreachable here)
    path = channels_dir / "marketplace.toml"
    path.write_text(path.read_text().replace('["DC-EAST"]', '["DC-EAT"]'))
    ports = {name: str(closed_port()) for name in DOWN}
    one_line_error(erpsync(*command, ERPSYNC_FLOWS__CHANNELS_DIR=str(channels_dir), **ports), 4,
                   f"erpsync {command[0]}: channel definition {path}: key 'locations': unknown location 'DC-EAT'")


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("ERPSYNC_KAFKA__PORT", "abc", "settings: ERPSYNC_KAFKA__PORT: Input should be a valid integer"),
    ("ERPSYNC_FLOWS__LOCATIONS", "DC-EAST", "settings: error parsing value for field \"flows\""),
    ("ERPSYNC_CLI__PROGRESS_INTERVAL_S", "0", "settings: ERPSYNC_CLI__PROGRESS_INTERVAL_S: Input should be greater"),
])
def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path: Path, variable: str, value: str,
                                                       expected: str) -> None:
    one_line_error(erpsync("replay", "--input", str(DUMP), "--output", str(tmp_path / "o"), **{variable: value}), 4,
                   expected)


def test_fail_on_dead_letters(tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes(DUMP.read_bytes() + b'{"topic": "erp.erp.items", "offset": "not a number"}\n')
    out = tmp_path / "out.jsonl"
    lenient = erpsync("replay", "--input", str(dump), "--output", str(out))
    assert lenient.returncode == 0, lenient.stderr[-2000:]
    strict = erpsync("replay", "--input", str(dump), "--output", str(out), "--fail-on-dead-letters")
    assert strict.returncode == 4, strict.stderr[-2000:]
    assert "Traceback" not in strict.stderr
    assert strict.stderr.splitlines()[-1].startswith("erpsync replay: 1 record(s) dead-lettered (--fail-on-dead-")
    # the summary: per output topic, then the dead letters by reason
    assert strict.stdout == lenient.stdout
    summary = strict.stdout.splitlines()
    assert summary[0] == f"replay: {len(dump.read_text().splitlines())} input records, " \
                         f"{len(out.read_text().splitlines())} output records written to {out}"
    per_topic = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in summary[1:]
                 if line.startswith("  ") and not line.startswith("   ")}
    written = [json.loads(line)["topic"] for line in out.read_text().splitlines()]
    assert per_topic == {t: written.count(t) for t in set(written)}
    assert "dead letters: 1, 1 distinct reason(s)" in summary
    bad_line = len(DUMP.read_bytes().splitlines()) + 1
    assert any(f"malformed dump line {bad_line}" in line for line in summary)
    clean = erpsync("replay", "--input", str(DUMP), "--output", str(out), "--fail-on-dead-letters")
    assert clean.returncode == 0 and "dead letters: none" in clean.stdout


# ----------------------------------------------------------------------------- unreachable systems: 3

DOWN = ["ERPSYNC_KAFKA__PORT", "ERPSYNC_CONNECT__PORT", "ERPSYNC_ERP__PORT", "ERPSYNC_OPS__PORT", "ERPSYNC_WMS__PORT",
        "ERPSYNC_REDIS__PORT"]


@pytest.mark.parametrize(("args", "system"), [
    (["exceptions", "list"], "the ops database (PostgreSQL)"),
    (["exceptions", "show", "x"], "the ops database (PostgreSQL)"),
    (["exceptions", "resolve", "x", "--note", "n"], "the ops database (PostgreSQL)"),
    (["dlq", "replay"], "Kafka at"),
    (["reconcile"], "the ERP database (PostgreSQL)"),
    (["connectors", "apply"], "Kafka Connect"),
    (["connectors", "status"], "Kafka Connect"),
    (["run"], "Kafka at"),
    (["demo"], "the ERP database (PostgreSQL)"),
    (["simulate", "--orders", "1"], "the ERP database (PostgreSQL)"),
    (["capture-fixtures", "--output", "/tmp/erpsync-test-never-written"], "the ERP database (PostgreSQL)"),
])
def test_every_command_names_the_system_it_cannot_reach(args: list[str], system: str) -> None:
    ports = {name: str(closed_port()) for name in DOWN}
    command = " ".join(a for a in args[:2] if not a.startswith("-"))
    line = one_line_error(erpsync(*args, **ports), 3, f"erpsync {command}: ", system, "is unreachable")
    assert "erpsync stack up" in line
    assert not Path("/tmp/erpsync-test-never-written").exists()


def test_a_system_that_goes_away_mid_command_is_one_line_too() -> None:
    # The preflight sees a listener; the real client then meets no PostgreSQL there.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = str(listener.getsockname()[1])
        env = {name: str(closed_port()) for name in DOWN} | {"ERPSYNC_OPS__PORT": port}
        one_line_error(erpsync("exceptions", "list", **env, ERPSYNC_OPS__PASSWORD="x"), 3,
                       "erpsync exceptions list: PostgreSQL unreachable:")


# ----------------------------------------------------------------------------- progress


@pytest.fixture(scope="module")
def big_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dump") / "dump.jsonl"
    generate(30_000, path)
    return path


def test_replay_logs_progress_lines_when_not_on_a_terminal(big_dump: Path, tmp_path: Path) -> None:
    result = erpsync("replay", "--input", str(big_dump), "--output", str(tmp_path / "out.jsonl"),
                     ERPSYNC_CLI__PROGRESS_INTERVAL_S="0.3")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line.split("erpsync.progress: ", 1)[1] for line in result.stderr.splitlines()
             if "erpsync.progress" in line]
    periodic = [line for line in lines if " of 30,000 records (" in line]
    assert periodic, result.stderr
    assert all("records/s" in line and "left" in line for line in periodic[1:]), periodic
    assert lines[-1].startswith("replay: 30,000 records in ") and lines[-1].endswith("records/s)")
    assert result.stdout.startswith("replay: 30,000 input records, ")


def test_replay_draws_a_bar_on_a_terminal(big_dump: Path, tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "erpsync", "replay", "--input", str(big_dump), "--output",
                                 str(tmp_path / "out.jsonl")], stdout=subprocess.PIPE, stderr=terminal, cwd=ROOT,
                                env={**os.environ, "COLUMNS": "160", "TERM": "xterm"})
        os.close(terminal)
        screen = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process has exited
                break
            if not chunk:
                break
            screen += chunk
        stdout = proc.communicate(timeout=120)[0]
    finally:
        os.close(controller)
    assert proc.returncode == 0
    text = screen.decode("utf-8", "replace")
    assert "━" in text and "replay" in text  # rich's bar
    assert " of 30,000 records (" in text and "records/s" in text
    assert b"replay: 30,000 input records" in stdout  # results stay on stdout, plain
