"""The components of the local stack, each started from Debian packages or Maven Central jars.

Every component follows one template: ``running()``, ``start()`` (which waits on a real health
check and raises ``StackError`` naming the component and its log), ``provision()`` (idempotent
schema/user set-up after it is healthy), ``stop()`` and ``describe()``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pwd
import stat
import subprocess
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from erpsync.settings import Settings
from erpsync.stack.connect import ConnectClient
from erpsync.stack.install import pg_bin
from erpsync.stack.process import (
    StackError,
    port_open,
    read_pid,
    run,
    spawn,
    tail,
    terminate,
    wait_until,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEBEZIUM_DIR = REPO_ROOT / "debezium"
REFERENCE_DIR = REPO_ROOT / "reference"


def _as_user(user: str, argv: list[str]) -> list[str]:
    """Run argv as `user` when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", user, "--", *argv]
    return argv


def _ensure_traversable(path: Path) -> None:
    """Let service users (postgres, mysql) reach `path`: add search (x) permission where missing.

    A project checked out under a private directory (mode 0700, as mktemp makes) would otherwise
    lock the database servers out of their own data directories. Only traversal is granted, not
    listing.
    """
    if os.geteuid() != 0:
        return
    for parent in reversed(path.resolve().parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.warning("granting search permission on %s so database service users can reach %s", parent, path)
            parent.chmod(mode | stat.S_IXOTH)


def _psql_quote(value: str) -> str:
    """Quote for a psql set value in single quotes, where backslash escapes apply: double both."""
    return value.replace("\\", "\\\\").replace("'", "''")


def _chown(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass
class Component:
    """Base of the template; subclasses fill in the commands."""

    settings: Settings
    name: str = ""
    home: Path = field(init=False)

    def __post_init__(self) -> None:
        self.home = self.settings.stack.home / self.name
        self.home.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None  # set when this run started it

    # What the component's process runs: a pid file naming another program is stale.
    program = ""

    @property
    def log_file(self) -> Path:
        return self.settings.stack.home / "logs" / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def pid(self) -> int | None:
        return read_pid(self.pid_file, self.program)

    def running(self) -> bool:
        return self.pid() is not None

    def healthy(self) -> bool:
        raise NotImplementedError

    def launch(self) -> None:
        raise NotImplementedError

    def provision(self) -> None:
        """Idempotent set-up once healthy (databases, users, connectors)."""

    def start(self) -> None:
        if self.running():
            # Ours and up: healthy now, or soon. If it exits meanwhile (it was still shutting down
            # from a `down`), start a new one.
            if wait_until(lambda: self.running() and self.healthy(),
                          timeout_s=self.settings.stack.start_timeout_s, alive=self.running):
                return
            if self.running():
                self._wait_healthy()  # raises: running but not healthy
        self.launch()
        self._wait_healthy()

    def _alive(self) -> bool:
        """Our process runs: the child we just started, if any (its exit status is authoritative)."""
        if self.process is not None:
            return self.process.poll() is None
        return self.running()

    def _wait_healthy(self) -> None:
        # Healthy *and ours*: a stray server answering on the port must not pass for this component.
        ok = wait_until(lambda: self._alive() and self.healthy(),
                        timeout_s=self.settings.stack.start_timeout_s, alive=self._alive)
        if not ok:
            state = "is running but not healthy" if self._alive() else "exited"
            raise StackError(
                f"{self.name} failed to start ({state}; endpoint {self.endpoint}); "
                f"see its log {self.log_file}\n--- last lines ---\n{tail(self.log_file)}"
            )

    def stop(self) -> bool:
        return terminate(self.pid_file, self.program)

    def describe(self) -> dict[str, Any]:
        pid = self.pid()
        up = pid is not None and self.healthy()
        return {
            "component": self.name,
            "state": "healthy" if up else ("unhealthy" if pid else "stopped"),
            "pid": pid,
            "endpoint": self.endpoint,
            "log": str(self.log_file),
        }


class Redis(Component):
    program = "redis-server"
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "redis")

    @property
    def endpoint(self) -> str:
        return f"{self.settings.redis.host}:{self.settings.redis.port}"

    def healthy(self) -> bool:
        try:
            client = redis.Redis(
                host=self.settings.redis.host, port=self.settings.redis.port, socket_timeout=1
            )
            return bool(client.ping())
        except redis.RedisError:
            return False

    def launch(self) -> None:
        self.process = spawn(
            [
                "redis-server",
                "--bind", self.settings.redis.host,
                "--port", str(self.settings.redis.port),
                "--dir", str(self.home),
                "--appendonly", "yes",
                "--daemonize", "no",
                "--protected-mode", "yes",
            ],
            log_file=self.log_file,
            pid_file=self.pid_file,
            cwd=self.home,  # what it writes to its working directory (a JVM crash log) stays out of the checkout
        )


class Postgres(Component):
    """One PostgreSQL cluster holding the ERP database and the erpsync ops database."""

    program = "postgres"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "postgres")
        self.data = self.home / "data"
        self.run_dir = self.home / "run"

    @property
    def endpoint(self) -> str:
        return f"{self.settings.erp.host}:{self.settings.erp.port}"

    def _conninfo(self, dbname: str) -> str:
        erp = self.settings.erp
        return psycopg.conninfo.make_conninfo(
            host=erp.host, port=erp.port, dbname=dbname, user=erp.user,
            password=erp.password.get_secret_value(), connect_timeout=3,
        )

    def healthy(self) -> bool:
        try:
            with psycopg.connect(self._conninfo("postgres")) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def _initdb(self) -> None:
        _ensure_traversable(self.home)
        if (self.data / "PG_VERSION").exists():
            return
        for path in (self.home, self.run_dir):
            path.mkdir(parents=True, exist_ok=True)
            _chown(path, "postgres")
        pwfile = self.home / ".pwfile"
        pwfile.write_text(self.settings.erp.password.get_secret_value())
        pwfile.chmod(0o600)
        _chown(pwfile, "postgres")
        try:
            run(
                _as_user("postgres", [
                    pg_bin("initdb"), "-D", str(self.data), "-U", self.settings.erp.user,
                    f"--pwfile={pwfile}", "--auth-local=peer", "--auth-host=scram-sha-256",
                    "--encoding=UTF8", "--locale=C.UTF-8",
                ]),
                what="postgres (initdb)",
                log_file=self.log_file,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'erpsync.conf'\n")

    def launch(self) -> None:
        self._initdb()
        # Rewritten on every start so port changes in settings take effect.
        conf = self.data / "erpsync.conf"
        conf.write_text(
            "\n".join([
                f"listen_addresses = '{self.settings.erp.host}'",
                f"port = {self.settings.erp.port}",
                f"unix_socket_directories = '{self.run_dir}'",
                "wal_level = logical",
                "max_wal_senders = 10",
                "max_replication_slots = 10",
                "shared_buffers = 128MB",
                "fsync = on",
                "",
            ])
        )
        _chown(conf, "postgres")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        _chown(self.log_file, "postgres")
        result = subprocess.run(
            _as_user("postgres", [
                pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log_file),
                "-w", "-t", str(int(self.settings.stack.start_timeout_s)), "start",
            ]),
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise StackError(
                f"postgres failed to start (pg_ctl exited {result.returncode}); "
                f"see its log {self.log_file}\n--- last lines ---\n{tail(self.log_file)}"
            )

    def stop(self) -> bool:
        if not self.running():
            return False
        subprocess.run(
            _as_user("postgres", [pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
            capture_output=True, check=False,
        )
        return True

    def pid(self) -> int | None:
        return read_pid(self.data / "postmaster.pid", self.program)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if info["state"] == "healthy":
            info["replication_slots"] = self.slot_lag()
        return info

    def slot_lag(self) -> dict[str, int | None]:
        """Bytes of WAL each replication slot still holds back (its consumer's lag)."""
        with psycopg.connect(self._conninfo(self.settings.erp.dbname)) as conn:
            rows = conn.execute(
                "SELECT slot_name, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
                " FROM pg_replication_slots ORDER BY slot_name"
            ).fetchall()
        return {name: lag for name, lag in rows}

    def provision(self) -> None:
        for dbname in (self.settings.erp.dbname, self.settings.ops.dbname):
            with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
                if not exists:
                    conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
        with psycopg.connect(self._conninfo(self.settings.erp.dbname), autocommit=True) as conn:
            has_schema = conn.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = 'erp' AND table_name = 'items'"
            ).fetchone()
            if not has_schema:
                conn.execute((REFERENCE_DIR / "erp.postgres.sql").read_text())
        erp = self.settings.erp
        logins = {  # least-privilege logins: Debezium's capture user, erpsync's intake writer
            "erp-capture.sql": {"capture_user": erp.capture_user,
                                "capture_password": erp.capture_password.get_secret_value()},
            "erp-intake-writer.sql": {"intake_user": erp.intake_user,
                                      "intake_password": erp.intake_password.get_secret_value()},
        }
        for script, variables in logins.items():
            self._psql_file(DEBEZIUM_DIR / script, dbname=erp.dbname, variables=variables)

    def _psql_file(self, path: Path, *, dbname: str, variables: dict[str, str]) -> None:
        # Variables go through stdin (\set), not argv, so passwords never show up in `ps`.
        sets = "".join(f"\\set {k} '{_psql_quote(v)}'\n" for k, v in variables.items())
        erp = self.settings.erp
        env = dict(os.environ, PGPASSWORD=erp.password.get_secret_value())
        run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", erp.host, "-p", str(erp.port),
             "-U", erp.user, "-d", dbname, "-f", "-"],
            what=f"postgres ({path.name})",
            log_file=self.log_file.with_name("postgres-setup.log"),
            env=env,
            input_text=sets + path.read_text(),
        )


class MariaDB(Component):
    """The WMS database, with a ROW-format binlog for Debezium."""

    program = "mariadbd"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "mariadb")
        self.data = self.home / "data"
        self.socket = self.home / "mysqld.sock"

    @property
    def endpoint(self) -> str:
        return f"{self.settings.wms.host}:{self.settings.wms.port}"

    def healthy(self) -> bool:
        if not self.socket.exists():
            return False
        result = subprocess.run(
            ["mariadb-admin", f"--socket={self.socket}", "-u", "root", "ping"],
            capture_output=True, check=False,
        )
        return result.returncode == 0

    def launch(self) -> None:
        _ensure_traversable(self.home)
        if not (self.data / "mysql").is_dir():
            self.data.mkdir(parents=True, exist_ok=True)
            _chown(self.data, "mysql")
            run(
                ["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={self.data}",
                 "--skip-test-db"],
                what="mariadb (mariadb-install-db)",
                log_file=self.log_file,
            )
        _chown(self.home, "mysql")
        self.process = spawn(
            [
                "mariadbd", "--no-defaults", "--user=mysql",
                f"--datadir={self.data}",
                f"--socket={self.socket}",
                f"--bind-address={self.settings.wms.host}",
                f"--port={self.settings.wms.port}",
                f"--pid-file={self.home / 'mariadbd.pid'}",
                "--server-id=1",
                f"--log-bin={self.data / 'binlog'}",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--expire-logs-days=7",
                "--innodb-buffer-pool-size=128M",
                "--skip-name-resolve",
            ],
            log_file=self.log_file,
            pid_file=self.pid_file,
            cwd=self.home,  # what it writes to its working directory (a JVM crash log) stays out of the checkout
        )

    def sql(self, statements: str, *, database: str | None = None) -> str:
        """Run SQL as the local root over the socket (OS-user auth), statements through stdin."""
        argv = ["mariadb", f"--socket={self.socket}", "-u", "root", "--batch", "--skip-column-names"]
        if database:
            argv.append(database)
        return run(argv, what="mariadb (setup)", log_file=self.log_file.with_name("mariadb-setup.log"),
                   input_text=statements)

    def provision(self) -> None:
        wms = self.settings.wms
        password = wms.password.get_secret_value()
        quoted = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
        # An admin login for TCP clients (tests, reconcile); the socket stays OS-user authenticated.
        self.sql(
            f"CREATE USER IF NOT EXISTS '{wms.user}'@'127.0.0.1' IDENTIFIED BY {quoted};\n"
            f"ALTER USER '{wms.user}'@'127.0.0.1' IDENTIFIED BY {quoted};\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{wms.user}'@'127.0.0.1' WITH GRANT OPTION;\n"
        )
        has_schema = self.sql(
            "SELECT COUNT(*) FROM information_schema.tables "
            f"WHERE table_schema = '{wms.dbname}' AND table_name = 'inventory_balances';"
        ).strip()
        if has_schema == "0":
            self.sql((REFERENCE_DIR / "wms.mysql.sql").read_text())
        capture_password = wms.capture_password.get_secret_value().replace("\\", "\\\\").replace("'", "\\'")
        self.sql(
            f"SET @capture_user = '{wms.capture_user}';\n"
            f"SET @capture_password = '{capture_password}';\n"
            + (DEBEZIUM_DIR / "wms-capture.sql").read_text()
        )


class Kafka(Component):
    """Apache Kafka in KRaft combined mode (broker + controller), one node."""

    program = "kafka.Kafka"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "kafka")
        self.data = self.home / "data"

    @property
    def endpoint(self) -> str:
        return self.settings.kafka.bootstrap_servers

    def healthy(self) -> bool:
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415 - heavy import, only when used

        if not port_open(self.settings.kafka.host, self.settings.kafka.port):
            return False
        admin = AdminClient({"bootstrap.servers": self.endpoint, "socket.timeout.ms": 2000})
        try:
            meta = admin.list_topics(timeout=3)
        except Exception:  # noqa: BLE001 - any failure means "not healthy yet"
            return False
        return bool(meta.brokers)

    def _write_config(self) -> Path:
        k = self.settings.kafka
        props = self.home / "server.properties"
        props.write_text(
            "\n".join([
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{k.host}:{k.controller_port}",
                f"listeners=PLAINTEXT://{k.host}:{k.port},CONTROLLER://{k.host}:{k.controller_port}",
                f"advertised.listeners=PLAINTEXT://{k.host}:{k.port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={self.data}",
                "num.partitions=1",
                "auto.create.topics.enable=true",
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=168",
                "log.cleaner.enable=true",
                "",
            ])
        )
        return props

    def launch(self) -> None:
        _write_log4j(self.settings.stack.home / "log4j2.properties")
        props = self._write_config()
        if not (self.data / "meta.properties").exists():
            cluster_id = kafka_cluster_id()
            run(
                _java(self.settings, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
                      heap="256m"),
                what="kafka (storage format)",
                log_file=self.log_file,
            )
        self.process = spawn(_java(self.settings, "kafka.Kafka", str(props), heap=self.settings.stack.kafka_heap),
                             log_file=self.log_file, pid_file=self.pid_file, cwd=self.home)


class Connect(Component):
    """Kafka Connect distributed worker with the Debezium PostgreSQL and MariaDB plugins."""

    program = "ConnectDistributed"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "connect")

    @property
    def endpoint(self) -> str:
        return self.settings.connect.url

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/connector-plugins", timeout=3) as resp:  # noqa: S310
                plugins = json.load(resp)
        except (OSError, ValueError):
            return False
        classes = {p.get("class", "") for p in plugins}
        return all(c in classes for c in _REQUIRED_PLUGINS)

    def launch(self) -> None:
        _write_log4j(self.settings.stack.home / "log4j2.properties")
        props = self.home / "connect-distributed.properties"
        worker = connect_worker_properties(self.settings)
        props.write_text("".join(f"{k}={v}\n" for k, v in worker.items()))
        self.process = spawn(
            _java(self.settings, "org.apache.kafka.connect.cli.ConnectDistributed", str(props),
                       heap=self.settings.stack.connect_heap),
            log_file=self.log_file,
            pid_file=self.pid_file,
            env=connector_env(self.settings),
            cwd=self.home,  # what it writes to its working directory (a JVM crash log) stays out of the checkout
        )

    def provision(self) -> None:
        client = ConnectClient(self.endpoint)
        connectors = load_connector_configs()
        for connector in connectors:
            client.apply(connector)
        for connector in connectors:
            client.wait_running(connector["name"], timeout_s=self.settings.stack.start_timeout_s,
                                log_file=self.log_file)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if info["state"] == "healthy":
            info["connectors"] = ConnectClient(self.endpoint).states()
        return info


_REQUIRED_PLUGINS = (
    "io.debezium.connector.postgresql.PostgresConnector",
    "io.debezium.connector.mariadb.MariaDbConnector",
)


def load_connector_configs() -> list[dict[str, Any]]:
    """The Debezium connector definitions, debezium/*.json ({"name", "config"}).

    From the source checkout, or from ./debezium when erpsync is installed as a package (the
    container image's working directory holds a copy).
    """
    for directory in (DEBEZIUM_DIR, Path.cwd() / "debezium"):
        paths = sorted(directory.glob("*.json"))
        if paths:
            return [json.loads(p.read_text()) for p in paths]
    raise StackError(f"no connector definitions (debezium/*.json) in {DEBEZIUM_DIR} or {Path.cwd() / 'debezium'}")


def connect_worker_properties(settings: Settings) -> dict[str, str]:
    """The Connect worker's settings; docker-compose.yml sets the same (a test compares them)."""
    c = settings.connect
    return {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "group.id": "erpsync-connect",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
        "config.storage.topic": "_erpsync-connect-configs",
        "offset.storage.topic": "_erpsync-connect-offsets",
        "status.storage.topic": "_erpsync-connect-status",
        "config.storage.replication.factor": "1",
        "offset.storage.replication.factor": "1",
        "status.storage.replication.factor": "1",
        "offset.flush.interval.ms": "1000",
        "listeners": f"http://{c.host}:{c.port}",
        "rest.advertised.host.name": c.host,
        "rest.advertised.port": str(c.port),
        "plugin.path": str(settings.stack.home / "jvm" / "plugins"),
        # Connector JSONs read hosts and credentials as ${env:...}: the same files serve the local
        # stack and docker-compose, and no password is stored in a connector config.
        "config.providers": "env",
        "config.providers.env.class": "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
    }


def connector_env(settings: Settings) -> dict[str, str]:
    """The environment the connector JSONs' ${env:...} placeholders read (the Connect worker's)."""
    env = dict(os.environ)
    for prefix, db in (("ERP", settings.erp), ("WMS", settings.wms)):
        env.update({
            f"ERPSYNC_{prefix}_HOST": db.host,
            f"ERPSYNC_{prefix}_PORT": str(db.port),
            f"ERPSYNC_{prefix}_DBNAME": db.dbname,
            f"ERPSYNC_{prefix}_CAPTURE_USER": db.capture_user,
            f"ERPSYNC_{prefix}_CAPTURE_PASSWORD": db.capture_password.get_secret_value(),
        })
    env["ERPSYNC_KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka.bootstrap_servers
    return env


def _java(settings: Settings, main: str, *args: str, heap: str) -> list[str]:
    """A JVM command line on the Kafka/Connect classpath fetched by debezium/pom.xml."""
    return [
        "java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={settings.stack.home / 'log4j2.properties'}",
        "-cp", str(settings.stack.home / "jvm" / "lib" / "*"), main, *args,
    ]


def _write_log4j(path: Path) -> None:
    path.write_text(
        "\n".join([
            "status = warn",
            "appender.console.type = Console",
            "appender.console.name = STDOUT",
            "appender.console.layout.type = PatternLayout",
            "appender.console.layout.pattern = [%d] %p %m (%c)%n",
            "rootLogger.level = INFO",
            "rootLogger.appenderRef.stdout.ref = STDOUT",
            "logger.kafka.name = kafka",
            "logger.kafka.level = WARN",
            "logger.kafkaapache.name = org.apache.kafka",
            "logger.kafkaapache.level = WARN",
            "logger.connect.name = org.apache.kafka.connect.runtime",
            "logger.connect.level = INFO",
            "logger.reflections.name = org.reflections",
            "logger.reflections.level = ERROR",
            "",
        ])
    )


def kafka_cluster_id() -> str:
    """A random KRaft cluster id (base64url of a UUID) that does not start with "-".

    One in 64 would, and kafka-storage then reads it as an option ("argument --cluster-id/-t:
    expected one argument"): a fresh stack failed to start that often. Kafka's own
    Uuid.randomUuid() skips those ids for the same reason.
    """
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()).startswith("-"):
        pass
    return cluster_id


def all_components(settings: Settings) -> list[Component]:
    """In start order; stop in reverse."""
    return [Redis(settings), Postgres(settings), MariaDB(settings), Kafka(settings), Connect(settings)]
