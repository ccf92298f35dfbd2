"""A commerce platform's API as a real HTTP server process, for the tests, the demo and the benchmark.

``python -m erpsync.commerce_api --port P --journal PATH [--rate R --burst B --fail-rate F
--hang-rate H --hang-s S --token T --reject-skus A,B]`` serves what push channels call, and behaves
like a platform does:

- ``POST /webhook``: the generic JSON webhook (connectors.http_channels);
  ``PUT /stores/<hash>/v3/inventory/adjustments/absolute``: BigCommerce's batch absolute
  inventory adjustment;
- a rate limit (token bucket: ``--rate`` per second, ``--burst`` at once): 429 with ``Retry-After``
  and BigCommerce's ``X-Rate-Limit-*`` headers, which every response carries;
- a share of requests fails with 500 (``--fail-rate``) and a share hangs past the client's timeout
  and is dropped unanswered (``--hang-rate``, ``--hang-s``); neither is applied;
- ``--token``: the bearer token or X-Auth-Token it expects (401 otherwise); ``--reject-skus``: SKUs
  it does not know (422, nothing of the request applied);
- ``Idempotency-Key``: a repeated key gets the first answer again and is not applied twice.

It records what it accepted and every request in a journal (JSON lines), read again at start, so
it can be stopped (``kill``) and started again: ``GET /_state`` returns what it holds per key, the
request log, and every write that overwrote a key with an older value (webhook items carry their
fence). ``POST /_control`` changes the failure shares and rejected SKUs while it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BIGCOMMERCE_PATH = "/v3/inventory/adjustments/absolute"


class Platform:
    """The server's state: rate limit, accepted values per key, idempotency, the journal."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.rate, self.burst = args.rate, args.burst
        self.fail_rate, self.hang_rate, self.hang_s = args.fail_rate, args.hang_rate, args.hang_s
        self.token = args.token
        self.quiet_limits = args.quiet_limits
        self.reject_skus = set(filter(None, (args.reject_skus or "").split(",")))
        self.random = random.Random(args.seed)  # noqa: S311 - fault injection, not security
        self.lock = threading.Lock()
        self.tokens = float(args.burst)
        self.refilled = time.monotonic()
        self.accepted: dict[str, dict[str, Any]] = {}  # "<kind>/<key>" -> {"value", "fence", "t"}
        self.older: list[dict[str, Any]] = []  # writes that overwrote a newer value
        self.requests: list[dict[str, Any]] = []  # {"t", "status", "items", "idem"}
        self.responses: dict[str, tuple[int, bytes]] = {}  # idempotency key -> first 2xx answer
        self.journal_path = Path(args.journal)
        self._load()
        self.journal = self.journal_path.open("a")

    def _load(self) -> None:
        if not self.journal_path.exists():
            return
        for line in self.journal_path.read_text().splitlines():
            rec = json.loads(line)
            if rec["type"] == "request":
                self.requests.append(rec["request"])
            elif rec["type"] == "accept":
                self.accepted.update(rec["entries"])
            elif rec["type"] == "older":
                self.older.append(rec["write"])
            elif rec["type"] == "response":
                self.responses[rec["idem"]] = (rec["status"], rec["body"].encode())

    def _log(self, rec: dict[str, Any]) -> None:
        self.journal.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def admit(self) -> tuple[bool, float, int]:
        """Take a token: (allowed, seconds until the next token, tokens left)."""
        now = time.monotonic()
        with self.lock:
            self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
            self.refilled = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True, max(0.0, (1 - self.tokens) / self.rate), int(self.tokens)
            return False, (1 - self.tokens) / self.rate, 0

    def record(self, arrived: float, status: int, items: int, idem: str | None, path: str) -> None:
        with self.lock:
            req = {"t": arrived, "status": status, "items": items, "idem": idem, "path": path}
            self.requests.append(req)
            self._log({"type": "request", "request": req})
            self.journal.flush()

    def apply(self, writes: list[tuple[str, Any, list[Any] | None]], idem: str | None, status: int,
              body: bytes) -> None:
        """Accept writes (key, value, fence or None) at once; a fence older than the held one is a violation."""
        now = time.time()
        with self.lock:
            entries = {}
            for key, value, fence in writes:
                held = self.accepted.get(key)
                if held is not None and fence is not None and held["fence"] is not None and _older(fence,
                                                                                                 held["fence"]):
                    write = {"key": key, "fence": fence, "held_fence": held["fence"], "t": now}
                    self.older.append(write)
                    self._log({"type": "older", "write": write})
                entries[key] = self.accepted[key] = {"value": value, "fence": fence, "t": now,
                                                     "writes": (held or {}).get("writes", 0) + 1}
            self._log({"type": "accept", "entries": entries})
            if idem:
                self.responses[idem] = (status, body)
                self._log({"type": "response", "idem": idem, "status": status, "body": body.decode()})
            self.journal.flush()

    def state(self, summary: bool) -> dict[str, Any]:
        with self.lock:
            statuses = Counter(str(r["status"]) for r in self.requests)
            out: dict[str, Any] = {"requests": len(self.requests), "by_status": dict(statuses),
                                   "accepted_keys": len(self.accepted), "older_writes": self.older,
                                   "rate": self.rate, "burst": self.burst}
            if not summary:
                out["accepted"] = self.accepted
                out["request_log"] = self.requests
            return out


def _older(new: list[Any], held: list[Any]) -> bool:
    """The push fence (connectors.http_channels.newer), negated: new is strictly older than held."""
    if new[0] < held[0] or new[1] < held[1]:
        return True
    return (new[0], new[1]) == (held[0], held[1]) and new[2] < held[2]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: without this, +40 ms (delayed ACK)
    platform: Platform

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        """Quiet: the journal records every request."""

    def _send(self, status: int, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> bytes:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return data

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path.startswith("/_state"):
            self._send(200, self.platform.state("summary" in self.path))
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path == "/_control":
            changes = self._body()
            p = self.platform
            with p.lock:
                for name in ("fail_rate", "hang_rate", "hang_s"):
                    if name in changes:
                        setattr(p, name, float(changes[name]))
                if "reject_skus" in changes:
                    p.reject_skus = set(changes["reject_skus"])
            self._send(200, {"ok": True})
        elif self.path == "/webhook":
            self._push(webhook=True)
        else:
            self._send(404, {"error": "not found"})

    def do_PUT(self) -> None:  # noqa: N802
        if self.path.endswith(BIGCOMMERCE_PATH):
            self._push(webhook=False)
        else:
            self._send(404, {"error": "not found"})

    def _push(self, *, webhook: bool) -> None:
        p = self.platform
        arrived = time.time()
        allowed, next_token_s, left = p.admit()  # first: judged as close to the arrival as this process can
        body = self._body()
        idem = self.headers.get("Idempotency-Key")
        limits = {"X-Rate-Limit-Requests-Left": str(left), "X-Rate-Limit-Requests-Quota": str(p.burst),
                  "X-Rate-Limit-Time-Window-Ms": str(int(1000 * p.burst / p.rate)),
                  "X-Rate-Limit-Time-Reset-Ms": str(math.ceil(next_token_s * 1000))}
        writes = _writes(body, webhook)
        if p.quiet_limits:
            limits.clear()
        if not allowed:
            p.record(arrived, 429, len(writes), idem, self.path)
            self._send(429, {"status": 429, "title": "Too many requests"},
                       {**limits, "Retry-After": str(max(1, math.ceil(next_token_s)))})
            return
        if p.token and p.token not in (self.headers.get("X-Auth-Token"),
                                       (self.headers.get("Authorization") or "").removeprefix("Bearer ")):
            p.record(arrived, 401, len(writes), idem, self.path)
            self._send(401, {"status": 401, "title": "Unauthorized"}, limits)
            return
        if idem and idem in p.responses:  # a retry of what was applied: the same answer, applied once
            status, data = p.responses[idem]
            p.record(arrived, status, len(writes), idem, self.path)
            self._send(status, data, {**limits, "Idempotent-Replayed": "true"})
            return
        roll = p.random.random()
        if roll < p.hang_rate:
            p.record(arrived, 0, len(writes), idem, self.path)  # 0: hung, never answered
            time.sleep(p.hang_s)
            self.close_connection = True
            return
        if roll < p.hang_rate + p.fail_rate:
            p.record(arrived, 500, len(writes), idem, self.path)
            self._send(500, {"status": 500, "title": "Internal server error"}, limits)
            return
        unknown = [w[0].partition("/")[2] for w in writes
                   if w[0].startswith("availability/") and w[0].partition("/")[2] in p.reject_skus]
        if unknown:
            p.record(arrived, 422, len(writes), idem, self.path)
            self._send(422, {"status": 422, "title": "Some SKUs were not found",
                             "errors": {f"sku {s}": "not found" for s in unknown}}, limits)
            return
        answer = json.dumps({"transaction_id": idem or "", "accepted": len(writes)}).encode()
        p.apply(writes, idem, 200, answer)
        p.record(arrived, 200, len(writes), idem, self.path)
        self._send(200, answer, limits)


def _writes(body: Any, webhook: bool) -> list[tuple[str, Any, list[Any] | None]]:
    """(key, value, fence) for each item of a request body."""
    if not webhook:
        return [(f"availability/{i['sku']}", i["quantity"], None) for i in body.get("items", [])]
    out: list[tuple[str, Any, list[Any] | None]] = []
    for a in body.get("availability", []):
        pos = a.get("positions") or {}
        out.append((f"availability/{a['sku']}", a["ats"], [pos.get("erp", ""), pos.get("wms", ""), a["version"]]))
    for o in body.get("order_status", []):
        out.append((f"order_status/{o['external_order_id']}",
                    {"status": o["status"], "carriers": o["carriers"], "tracking_numbers": o["tracking_numbers"]},
                    ["", "", o["version"]]))
    return out


def serve(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m erpsync.commerce_api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--journal", required=True, help="JSON lines: requests and accepted values (kept)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second allowed")
    parser.add_argument("--burst", type=int, default=10, help="requests allowed at once")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of requests answered 500")
    parser.add_argument("--hang-rate", type=float, default=0.0, help="share of requests never answered")
    parser.add_argument("--hang-s", type=float, default=30.0, help="how long a hung request holds its connection")
    parser.add_argument("--token", default=os.environ.get("COMMERCE_API_TOKEN"), help="expected token (or env)")
    parser.add_argument("--reject-skus", help="comma-separated SKUs answered 422")
    parser.add_argument("--quiet-limits", action="store_true",
                        help="no X-Rate-Limit-* headers until it throttles (a 429 with Retry-After only)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    Handler.platform = Platform(args)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"commerce api on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


class CommerceApi:
    """The server as a child process: start, stop (as long as you like), start again, read its state."""

    def __init__(self, port: int, journal: Path, **options: Any) -> None:
        self.port, self.journal, self.options = port, journal, options
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, **options: Any) -> CommerceApi:
        self.options.update(options)
        args = [sys.executable, "-m", "erpsync.commerce_api", "--port", str(self.port), "--journal", str(self.journal)]
        for name, value in self.options.items():
            if value is True:
                args.append(f"--{name.replace('_', '-')}")
            elif value not in (False, None):
                args += [f"--{name.replace('_', '-')}", str(value)]
        log = self.journal.with_suffix(".log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                self.state(summary=True)
                return self
            except OSError as exc:
                if self.proc.poll() is not None:
                    log_text = self.journal.with_suffix(".log").read_text()[-500:]
                    raise RuntimeError(f"commerce api exited: {log_text}") from exc
                time.sleep(0.1)
        raise RuntimeError("commerce api did not start within 15 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # like a platform going down: connections refused from now on
            self.proc.wait(10)

    def state(self, summary: bool = False) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_state{'?summary' if summary else ''}", timeout=30) as r:  # noqa: S310
            result: dict[str, Any] = json.loads(r.read())
            return result

    def control(self, **changes: Any) -> None:
        req = urllib.request.Request(f"{self.url}/_control", data=json.dumps(changes).encode(),  # noqa: S310
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10):  # noqa: S310 - loopback
            pass

    def __enter__(self) -> CommerceApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    serve()
