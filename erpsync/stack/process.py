"""Small process helpers for the local stack: detached start, pid files, port and health waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class StackError(RuntimeError):
    """A component could not be installed, started or stopped. The message names it and its log."""


def tail(path: Path, lines: int = 15) -> str:
    """Last lines of a log file (empty when there is none)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def private_file(path: Path, text: str | None = None) -> Path:
    """Create path (and its directory) readable by its owner only (0600); write text if given.

    Logs, configuration with credentials, ACL and password files of the stack are all made here,
    so none is ever readable by other users of the machine, not even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if text is not None else os.O_APPEND), 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        if text is not None:
            os.write(fd, text.encode())
    finally:
        os.close(fd)
    return path


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_pid(pid_file: Path, program: str | None = None) -> int | None:
    """The pid on the first line of pid_file when that process is alive (and runs `program`), else None.

    Checking the program keeps a stale pid file (say, after a reboot) from naming, and `down` from
    killing, an unrelated process that got the same pid.
    """
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # A zombie (exited, not reaped by us) is not running.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return pid
    if state == "Z":
        return None
    if program is not None:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        if program not in cmdline:
            return None
    return pid


def spawn(
    argv: Sequence[str],
    *,
    log_file: Path,
    pid_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start argv in its own session, output appended to log_file (0600), pid written to pid_file."""
    with private_file(log_file).open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    return proc


def terminate(pid_file: Path, program: str, *, timeout_s: float = 60.0) -> bool:
    """SIGTERM the process in pid_file and wait; SIGKILL after timeout_s. True if one was running."""
    pid = read_pid(pid_file, program)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if read_pid(pid_file, program) is None:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def wait_until(
    check: Callable[[], bool],
    *,
    timeout_s: float,
    alive: Callable[[], bool] | None = None,
    interval_s: float = 0.5,
) -> bool:
    """Poll check() until it is true (True), the timeout passes or alive() turns false (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        if alive is not None and not alive():
            return check()
        time.sleep(interval_s)
    return check()


def run(
    argv: Sequence[str],
    *,
    what: str,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    log_output: bool = True,
) -> str:
    """Run a set-up command to completion, logging its output; raise StackError naming `what`.

    ``log_output=False`` keeps the output of a tool that prints derived credentials (Kafka's storage
    format echoes the SCRAM records it writes) out of the log.
    """
    result = subprocess.run(
        list(argv),
        input=input_text,
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        check=False,
    )
    with private_file(log_file).open("a") as log:
        output = f"{result.stdout}{result.stderr}" if log_output else f"(output not logged; exit {result.returncode})\n"
        log.write(f"$ {' '.join(argv)}\n{output}")
    if result.returncode != 0:
        raise StackError(
            f"{what}: `{argv[0]}` exited with {result.returncode}; see {log_file}\n"
            f"{(result.stderr or (result.stdout if log_output else '')).strip()[-2000:]}"
        )
    return result.stdout
