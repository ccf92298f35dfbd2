"""The local stack, on loopback, with all data under one directory (``ERPSYNC_STACK__HOME``).

Kafka (KRaft, SASL/SCRAM), Kafka Connect + Debezium (REST with basic auth), PostgreSQL for the ERP,
a second PostgreSQL cluster for erpsync's ops database, MariaDB (WMS) and Redis (ACL users).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from erpsync.settings import Settings
from erpsync.stack.components import DEBEZIUM_DIR, all_components
from erpsync.stack.install import ensure_jars, ensure_packages
from erpsync.stack.process import StackError

log = logging.getLogger(__name__)

__all__ = ["StackError", "down", "status", "up"]


def up(settings: Settings, *, on_step: Callable[[str], None] | None = None) -> dict[str, float]:
    """Install what is missing, start every component and provision it. Idempotent.

    Returns seconds spent per step, for the operator and for the stack timing figures. on_step is
    called with each step's name ("install", a component's name, "migrations") as it begins.
    """
    step = on_step or (lambda name: None)
    timings: dict[str, float] = {}
    home = settings.stack.home
    home.mkdir(parents=True, exist_ok=True)
    for path in (home / "logs").glob("*"):  # logs of an older stack were world-readable
        path.chmod(0o600)
    install_log = home / "logs" / "install.log"
    t0 = time.monotonic()
    step("install")
    ensure_packages(install_log)
    ensure_jars(DEBEZIUM_DIR / "pom.xml", home / "jvm", install_log)
    timings["install"] = time.monotonic() - t0
    components = all_components(settings)
    # Components started with another configuration stop first, newest first as in `down` (Connect
    # before the Kafka it uses), so that each restarts against dependencies already reconfigured.
    for component in reversed(components):
        component.stop_if_reconfigured()
    for component in components:
        t0 = time.monotonic()
        step(component.name)
        component.start()
        component.provision()
        timings[component.name] = time.monotonic() - t0
        log.info("%s healthy at %s (%.1fs)", component.name, component.endpoint, timings[component.name])
    from connectors import ops_db  # noqa: PLC0415  (the stack module stays light to import)

    step("migrations")
    ops_db.migrate(settings)  # the ops database's tables exist before any flow or CLI needs them
    return timings


def down(settings: Settings) -> list[str]:
    """Stop every component, newest first (Connect flushes its offsets on SIGTERM). Data is kept."""
    stopped = []
    for component in reversed(all_components(settings)):
        if component.stop():
            stopped.append(component.name)
    return stopped


def status(settings: Settings) -> list[dict[str, Any]]:
    return [component.describe() for component in all_components(settings)]


def pipeline_health(settings: Settings) -> dict[str, Any] | None:
    """What the pipeline (`erpsync run` with this recovery directory) reports of its sinks, if it runs.

    The pipeline writes ``health.json`` beside its recovery store (connectors.resilience.HEALTH) on
    every change of a sink's state; None when no pipeline ever ran there, or it is not running.
    """
    path = settings.recovery_dir / "health.json"
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        os.kill(int(doc["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return doc
