"""Each door the security probe found open, tried on the real local stack: every one must be shut.

Redis without a password and writable by anyone, Kafka PLAINTEXT without credentials, Connect's
REST API open and writing a resolved capture password into a world-readable log, and the ops
database in the ERP's cluster where the capture login's REPLICATION right reads it.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import stat
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest
import redis
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from connectors import ops_db
from connectors.redis import FENCED_HSET
from connectors.redis import client as redis_client
from erpsync.logs import KAFKA_CLIENT_LOGGER
from erpsync.settings import Settings
from erpsync.stack.components import all_components

from .conftest import unique

# -- Redis


def test_redis_refuses_clients_without_a_login(settings: Settings) -> None:
    with socket.create_connection((settings.redis.host, settings.redis.port), timeout=5) as raw:  # RESP by hand
        raw.sendall(b"HGET ats:b2b-portal SKU-1\r\n")
        assert raw.recv(200).startswith(b"-NOAUTH")
    anonymous = redis.Redis(host=settings.redis.host, port=settings.redis.port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.hget("ats:b2b-portal", "SKU-1")
    with pytest.raises(redis.AuthenticationError):  # the default user is off, whatever the password
        redis.Redis(host=settings.redis.host, port=settings.redis.port, password="", socket_timeout=5).ping()


def test_a_wrong_redis_password_is_one_line_naming_the_user_and_the_server(settings: Settings) -> None:
    wrong = settings.model_copy(update={"redis": settings.redis.model_copy(update={"password": SecretStr("not-it")})})
    with pytest.raises(redis.AuthenticationError) as failure:
        redis_client(wrong).ping()
    message = str(failure.value)
    assert "\n" not in message
    assert repr(settings.redis.user) in message and f"{settings.redis.host}:{settings.redis.port}" in message
    assert "not-it" not in message


def test_the_storefront_login_cannot_forge_a_value_or_a_fence(settings: Settings) -> None:
    """The probe froze a SKU's ATS by writing a value and a fence far ahead; storefronts only read."""
    channel, sku = unique("sec"), "SKU-SEC-1"
    pipeline, storefront = redis_client(settings), redis_client(settings, reader=True)
    try:
        written = pipeline.register_script(FENCED_HSET)(
            keys=[f"ats:{channel}", f"ats-version:{channel}"], args=[sku, "7", "1"])
        assert written == 1
        pipeline.hset(f"price:{channel}:default", sku, "12.5000")
        assert storefront.hget(f"ats:{channel}", sku) == b"7"  # the read contract works
        assert storefront.hgetall(f"price:{channel}:default") == {sku.encode(): b"12.5000"}
        forged = str(2**62)
        with pytest.raises(redis.exceptions.NoPermissionError):
            storefront.hset(f"ats:{channel}", sku, "0")
        with pytest.raises(redis.exceptions.NoPermissionError):
            storefront.hset(f"ats-version:{channel}", sku, forged)
        with pytest.raises(redis.exceptions.NoPermissionError):
            storefront.eval(FENCED_HSET, 2, f"ats:{channel}", f"ats-version:{channel}", sku, "0", forged)
        with pytest.raises(redis.exceptions.NoPermissionError):
            storefront.hset(f"price:{channel}:default", sku, "0.0001")
        with pytest.raises(redis.exceptions.NoPermissionError):
            storefront.hget(f"ats-version:{channel}", sku)  # not a storefront key
        with pytest.raises(redis.exceptions.NoPermissionError):
            storefront.delete(f"ats:{channel}")
        assert pipeline.hget(f"ats:{channel}", sku) == b"7"
        assert pipeline.hget(f"ats-version:{channel}", sku) == b"1"
    finally:
        pipeline.delete(f"ats:{channel}", f"ats-version:{channel}", f"price:{channel}:default")


def test_the_pipeline_login_writes_its_keys_only(settings: Settings) -> None:
    pipeline = redis_client(settings)
    key = unique("other")
    with pytest.raises(redis.exceptions.NoPermissionError):
        pipeline.set(key, "x")
    for dangerous in (lambda: pipeline.flushall(), lambda: pipeline.config_get("*"), lambda: pipeline.keys("*"),
                      lambda: pipeline.acl_list()):
        with pytest.raises(redis.exceptions.NoPermissionError):
            dangerous()


# -- Kafka


def _metadata(config: dict[str, Any]) -> int:
    return len(AdminClient(config | {"socket.timeout.ms": 2000}).list_topics(timeout=4).topics)


def test_kafka_refuses_plaintext_and_unknown_or_wrong_logins(settings: Settings) -> None:
    good = settings.kafka.client_config()
    assert _metadata(good) > 0
    refused = [
        {"bootstrap.servers": settings.kafka.bootstrap_servers},  # PLAINTEXT, no credentials
        good | {"sasl.password": "not-it"},
        good | {"sasl.username": unique("nobody")},
        good | {"sasl.mechanism": "PLAIN"},  # only SCRAM is enabled
    ]
    for config in refused:
        with pytest.raises(KafkaException):
            _metadata(config)


def test_a_wrong_kafka_password_is_logged_as_one_line_naming_the_user(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    config = settings.kafka.client_config() | {"sasl.password": "not-it", "group.id": unique("sec")}
    consumer = Consumer(config)
    try:
        with caplog.at_level(logging.INFO, logger=KAFKA_CLIENT_LOGGER):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any("authentication" in r.getMessage() for r in caplog.records):
                consumer.poll(0.5)
    finally:
        consumer.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kafka: authentication as user")]
    assert lines, [r.getMessage() for r in caplog.records]
    assert repr(settings.kafka.user) in lines[0] and "\n" not in lines[0] and "not-it" not in lines[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_kafka_outage_does_not_flood_the_log(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Before the limit, an outage made the pipeline's clients log about 350 lines a second."""
    down = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"port": _closed_port()})})
    limit = next(f for f in logging.getLogger(KAFKA_CLIENT_LOGGER).filters if hasattr(f, "suppressed"))
    suppressed_before = limit.suppressed
    producers = [Producer(down.kafka.client_config() | {"reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 50})
                 for _ in range(20)]  # the pipeline runs a client per input partition, and more
    with caplog.at_level(logging.DEBUG, logger=KAFKA_CLIENT_LOGGER):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for p in producers:
                p.poll(0.01)
    logged = [r for r in caplog.records if r.name == KAFKA_CLIENT_LOGGER]
    suppressed = limit.suppressed - suppressed_before
    assert suppressed > 100, f"no burst to limit ({len(logged)} lines logged)"
    # At most the window's budget per level (5 per 10 s), however big the burst.
    by_level: dict[int, int] = {}
    for r in logged:
        by_level[r.levelno] = by_level.get(r.levelno, 0) + 1
    assert all(n <= 5 for n in by_level.values()), by_level
    for p in producers:
        p.flush(0)


# -- Kafka Connect


def _connect(settings: Settings, method: str, path: str, body: Any = None, *, auth: bool) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if auth:
        login = f"{settings.connect.user}:{settings.connect.password.get_secret_value()}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
    req = urllib.request.Request(f"{settings.connect.url}{path}", method=method, headers=headers,  # noqa: S310
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_connect_rest_needs_a_login_and_leaves_no_secret_in_its_log(settings: Settings) -> None:
    log_file = next(c for c in all_components(settings) if c.name == "connect").log_file
    start = log_file.stat().st_size
    validate = "/connector-plugins/io.debezium.connector.postgresql.PostgresConnector/config/validate"
    literal = unique("Literal-Secret")
    # The probe's call: a host field naming the capture password's variable, so that the failed
    # connection test logged the resolved value.
    probe = {"connector.class": "io.debezium.connector.postgresql.PostgresConnector",
             "database.hostname": "${env:ERPSYNC_ERP_CAPTURE_PASSWORD}", "database.port": str(settings.erp.port),
             "database.dbname": settings.erp.dbname, "database.user": settings.erp.capture_user,
             "database.password": literal, "topic.prefix": "probe"}
    assert _connect(settings, "GET", "/connectors", auth=False)[0] == 401
    assert _connect(settings, "PUT", validate, probe, auth=False)[0] == 401
    wrong_login = settings.connect.model_copy(update={"password": SecretStr("not-it")})
    wrong = settings.model_copy(update={"connect": wrong_login})
    assert _connect(wrong, "GET", "/connectors", auth=True)[0] == 401
    status, body = _connect(settings, "PUT", validate, probe, auth=True)
    assert status == 200 and json.loads(body)["error_count"] >= 1  # it did try, and failed, to connect
    status, _ = _connect(settings, "PUT", validate, probe | {"database.hostname": settings.erp.host}, auth=True)
    assert status == 200
    time.sleep(1)
    with log_file.open("rb") as fh:
        fh.seek(start)
        written = fh.read().decode("utf-8", "replace")
    assert "validate" in written  # the calls were logged (the request log), ...
    for secret in (settings.erp.capture_password.get_secret_value(), literal,
                   settings.connect.password.get_secret_value()):
        assert secret not in written  # ... no secret was


# -- Log and secret files


def test_stack_logs_and_secret_files_are_private(settings: Settings) -> None:
    home = settings.stack.home
    private = [*(home / "logs").iterdir(), home / "redis" / "users.acl", home / "kafka" / "server.properties",
               home / "kafka" / "broker.password", home / "connect" / "rest-credentials.properties",
               home / "connect" / "connect-distributed.properties", home / "log4j2.properties"]
    assert len(private) > 8
    for path in private:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is mode {mode:o}"
    assert settings.redis.password.get_secret_value() not in (home / "redis" / "users.acl").read_text()


# -- The ops database


def test_ops_data_is_out_of_reach_of_the_erp_capture_login(settings: Settings, erp: psycopg.Connection[Any]) -> None:
    """The probe connected the capture login to the ops database (same cluster) and decoded it through a slot."""
    erp_db, ops = settings.erp, settings.ops
    assert (ops.host, ops.port) != (erp_db.host, erp_db.port)
    with ops_db.connect(settings) as conn:  # where the pipeline's ops tables are
        assert conn.execute("SELECT to_regclass('sync.exceptions') IS NOT NULL").fetchone() == (True,)
    # Not a database of the ERP's cluster: neither SQL nor a logical decoding slot of the capture
    # login, nor its physical replication of the cluster, reaches ops data there.
    assert erp.execute("SELECT 1 FROM pg_database WHERE datname = %s", (ops.dbname,)).fetchone() is None
    login = {"user": erp_db.capture_user, "password": erp_db.capture_password.get_secret_value(), "connect_timeout": 5}
    for extra in ({}, {"replication": "database"}):
        with pytest.raises(psycopg.OperationalError, match="does not exist"):
            psycopg.connect(host=erp_db.host, port=erp_db.port, dbname=ops.dbname, **login, **extra)
    # And the capture login is no login of the ops cluster, for SQL or for replication.
    for extra in ({}, {"replication": "database"}, {"replication": "true"}):
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            psycopg.connect(host=ops.host, port=ops.port, dbname=ops.dbname, **login, **extra)
    # The right itself is intact (so the refusals above are not a broken login): a slot on the ERP.
    with psycopg.connect(host=erp_db.host, port=erp_db.port, dbname=erp_db.dbname, autocommit=True, **login) as cap:
        slot = unique("sec_slot").replace("-", "_")
        cap.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding', true)", (slot,))
        assert cap.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() == (1,)
