"""Local stack timings and memory: cold `stack up`, warm `stack up`, restart, RSS per component.

Usage: python -m bench.stack
Runs a second, throw-away stack in a temporary home on shifted ports (so a running development
stack is not disturbed). "Cold" means a new data directory: jars copied from the Maven cache,
databases initialised, schemas loaded, connectors registered and snapshotting.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from erpsync import stack
from erpsync.settings import load_settings


def erpsync(env: dict[str, str], *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "erpsync", *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def rss_mib(pid: int) -> float:
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total = int(line.split()[1])
    return total / 1024


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="erpsync-bench-stack-"))
    shift = 1000
    env = dict(os.environ, ERPSYNC_STACK__HOME=str(home))
    for var, port in (("KAFKA__PORT", 19092), ("KAFKA__CONTROLLER_PORT", 19093), ("CONNECT__PORT", 18083),
                      ("ERP__PORT", 15432), ("OPS__PORT", 15432), ("WMS__PORT", 13306), ("REDIS__PORT", 16379)):
        env[f"ERPSYNC_{var}"] = str(port + shift)
    try:
        cold = erpsync(env, "stack", "up")
        warm = erpsync(env, "stack", "up")
        os.environ.update({k: v for k, v in env.items() if k.startswith("ERPSYNC_")})
        settings = load_settings()
        rss = {r["component"]: rss_mib(r["pid"]) for r in stack.status(settings)}
        erpsync(env, "stack", "down")
        restart = erpsync(env, "stack", "up")
        print(f"cold stack up (new data dir)   {cold:6.1f} s")
        print(f"warm stack up (already up)     {warm:6.1f} s")
        print(f"stack up after down (restart)  {restart:6.1f} s")
        for component, mib in rss.items():
            print(f"RSS {component:<9}                  {mib:6.0f} MiB")
    finally:
        subprocess.run([sys.executable, "-m", "erpsync", "stack", "down"], env=env, check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
