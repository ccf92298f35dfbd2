"""Kafka Connect REST client (HTTP basic auth): idempotent connector registration and state checks."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from erpsync.settings import ConnectSettings
from erpsync.stack.process import StackError, tail


class ConnectClient:
    def __init__(self, url: str, user: str, password: SecretStr) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self._authorization = "Basic " + base64.b64encode(f"{user}:{password.get_secret_value()}".encode()).decode()

    @classmethod
    def of(cls, settings: ConnectSettings) -> ConnectClient:
        """The client of the configured Connect cluster, with its REST login."""
        return cls(settings.url, settings.user, settings.password)

    def _request(self, method: str, path: str, body: Any = None, *, timeout_s: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - the URL comes from settings
            f"{self.url}{path}", data=data, method=method,
            headers={"Content-Type": "application/json", "Authorization": self._authorization},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise StackError(f"connect: authentication as user {self.user!r} at {self.url} failed (401); "
                                 "check ERPSYNC_CONNECT__USER/PASSWORD") from None
            detail = exc.read().decode("utf-8", "replace")[:2000]
            raise StackError(f"connect: {method} {path} returned {exc.code}: {detail}") from exc
        return json.loads(raw) if raw else None

    def plugins(self, *, timeout_s: float = 30) -> list[dict[str, Any]]:
        """The installed connector plugins."""
        result: list[dict[str, Any]] = self._request("GET", "/connector-plugins", timeout_s=timeout_s)
        return result

    def apply(self, connector: dict[str, Any]) -> None:
        """Create or update a connector from its JSON ({"name", "config"}); PUT is idempotent.

        A connector or task that had FAILED (say, under an earlier configuration) is restarted, so
        that the state waited on next is the new configuration's.
        """
        name = connector["name"]
        self._request("PUT", f"/connectors/{name}/config", connector["config"])
        st = self.status(name) or {}
        if "FAILED" in [st.get("connector", {}).get("state"), *(t.get("state") for t in st.get("tasks", []))]:
            self._request("POST", f"/connectors/{name}/restart?includeTasks=true&onlyFailed=true")

    def status(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._request("GET", f"/connectors/{name}/status")
        except StackError as exc:
            if "returned 404" in str(exc):
                return None
            raise
        return result

    def states(self) -> dict[str, dict[str, Any]]:
        """Connector and task state of every connector."""
        names: list[str] = self._request("GET", "/connectors")
        out: dict[str, dict[str, Any]] = {}
        for name in sorted(names):
            st = self.status(name) or {}
            out[name] = {
                "connector": st.get("connector", {}).get("state", "UNKNOWN"),
                "tasks": [t.get("state", "UNKNOWN") for t in st.get("tasks", [])],
            }
        return out

    def wait_running(self, name: str, *, timeout_s: float, log_file: Path | None = None) -> None:
        """Wait until the connector and all its tasks are RUNNING; fail fast on FAILED."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = self.status(name)
            if last:
                states = [last["connector"]["state"]] + [t["state"] for t in last.get("tasks", [])]
                if "FAILED" in states:
                    traces = [t.get("trace", "") for t in [last["connector"], *last.get("tasks", [])]]
                    first = next((t.splitlines()[0] for t in traces if t), "no trace")
                    raise StackError(
                        f"connector {name} FAILED: {first}; see {_where(log_file)}"
                    )
                if last.get("tasks") and all(s == "RUNNING" for s in states):
                    return
            time.sleep(1)
        raise StackError(
            f"connector {name} not RUNNING after {timeout_s:.0f}s (last status {last}); "
            f"see {_where(log_file)}" + (f"\n{tail(log_file)}" if log_file else "")
        )


def _where(log_file: Path | None) -> str:
    return f"the connect log {log_file}" if log_file else "the Kafka Connect worker's log"
