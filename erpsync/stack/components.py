"""The components of the local stack, each started from Debian packages or Maven Central jars.

Every component follows one template: ``running()``, ``start()`` (which waits on a real health
check and raises ``StackError`` naming the component and its log), ``provision()`` (idempotent
schema/user set-up after it is healthy), ``stop()`` and ``describe()``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import pwd
import secrets
import stat
import subprocess
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from erpsync.logs import kafka_client_logger
from erpsync.settings import SASL_MECHANISM, DatabaseSettings, RedisSettings, Settings
from erpsync.stack.connect import ConnectClient
from erpsync.stack.install import pg_bin
from erpsync.stack.process import (
    StackError,
    port_open,
    private_file,
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

    def launch_config(self) -> str:
        """What the process is started with (arguments, configuration, credentials); '' when nothing to track.

        Its hash is kept beside the running process: when it differs (settings changed, or a stack
        started by an older erpsync without its ACLs and logins), `stack up` restarts the component.
        """
        return ""

    @property
    def _launched_file(self) -> Path:
        return self.home / "launched-config.sha256"

    def _config_changed(self) -> bool:
        config = self.launch_config()
        if not config:
            return False
        try:
            return self._launched_file.read_text() != hashlib.sha256(config.encode()).hexdigest()
        except FileNotFoundError:
            return True

    def stop_if_reconfigured(self) -> None:
        """Stop the component when it runs with another configuration than the one it would start with now."""
        if self.running() and self._config_changed():
            log.info("%s: its configuration changed since it started; restarting it", self.name)
            self.stop()

    def start(self) -> None:
        self.stop_if_reconfigured()
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
        if config := self.launch_config():
            private_file(self._launched_file, hashlib.sha256(config.encode()).hexdigest())

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


# Redis ACL rules (docker-compose.yml sets the same; tests/unit/test_deployment.py compares them).
# The pipeline: its keys only (connectors.redis writes ats:<channel> and the fence ats-version:<channel>;
# price:<channel>:<list> for prices; erpsync:* for its own markers), no admin or dangerous commands.
REDIS_PIPELINE_RULES = ("resetkeys ~ats:* ~ats-version:* ~price:* ~erpsync:* resetchannels "
                        "-@all +@read +@write +@keyspace +@scripting +@transaction +@connection -@dangerous")
# The default user: off (no connection can log in as it, nor runs as it unauthenticated), yet holding
# the pipeline's rights. Redis replays its append-only file at start as the default user and checks
# each replayed MULTI/EXEC against that user's ACL (redis/redis#14541): the fenced writes (a script's
# two HSETs, logged as MULTI/EXEC) were all dropped at a restart while the default user could run nothing.
REDIS_DEFAULT_RULES = f"off resetpass {REDIS_PIPELINE_RULES}"
# Storefronts: hash reads of ats:* and price:* (read-only key patterns), nothing else: a forged value
# or fence cannot be written with this login.
REDIS_READER_RULES = ("resetkeys %R~ats:* %R~price:* resetchannels -@all +@connection -@dangerous "
                      "+hget +hmget +hgetall +hexists +hlen +hkeys +hvals +hscan +hstrlen")


def redis_acl(r: RedisSettings) -> str:
    """The ACL file: the default user off (REDIS_DEFAULT_RULES), the pipeline's and the storefronts' users."""

    def digest(password: str) -> str:
        return hashlib.sha256(password.encode()).hexdigest()

    for user in (r.user, r.reader_user):
        if not user or any(c.isspace() for c in user):
            raise StackError(f"redis: user name {user!r} is empty or contains white space")
    return (
        f"user default {REDIS_DEFAULT_RULES}\n"
        f"user {r.user} on #{digest(r.password.get_secret_value())} {REDIS_PIPELINE_RULES}\n"
        f"user {r.reader_user} on #{digest(r.reader_password.get_secret_value())} {REDIS_READER_RULES}\n"
    )


class Redis(Component):
    program = "redis-server"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "redis")

    @property
    def endpoint(self) -> str:
        return f"{self.settings.redis.host}:{self.settings.redis.port}"

    @property
    def acl_file(self) -> Path:
        return self.home / "users.acl"

    def healthy(self) -> bool:
        import redis  # noqa: PLC0415 - the stack module stays light to import

        from connectors.redis import client  # noqa: PLC0415

        try:
            with client(self.settings, socket_timeout=1) as conn:
                return bool(conn.ping())
        except redis.RedisError:
            return False

    def _argv(self) -> list[str]:
        return [
            "redis-server",
            "--bind", self.settings.redis.host,
            "--port", str(self.settings.redis.port),
            "--dir", str(self.home),
            "--appendonly", "yes",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--aclfile", str(self.acl_file),
        ]

    def launch_config(self) -> str:
        return " ".join(self._argv()) + "\n" + redis_acl(self.settings.redis)

    def launch(self) -> None:
        private_file(self.acl_file, redis_acl(self.settings.redis))
        # its working directory is its home: what it writes there (a crash log) stays out of the checkout
        self.process = spawn(self._argv(), log_file=self.log_file, pid_file=self.pid_file, cwd=self.home)


class Postgres(Component):
    """The ERP's PostgreSQL cluster, with logical decoding for Debezium."""

    program = "postgres"
    wal_level = "logical"

    def __init__(self, settings: Settings, name: str = "postgres") -> None:
        super().__init__(settings, name)
        self.data = self.home / "data"
        self.run_dir = self.home / "run"

    @property
    def db(self) -> DatabaseSettings:
        return self.settings.erp

    @property
    def endpoint(self) -> str:
        return f"{self.db.host}:{self.db.port}"

    def _conninfo(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.db.host, port=self.db.port, dbname=dbname, user=self.db.user,
            password=self.db.password.get_secret_value(), connect_timeout=3,
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
        pwfile = private_file(self.home / ".pwfile", self.db.password.get_secret_value())
        _chown(pwfile, "postgres")
        try:
            run(
                _as_user("postgres", [
                    pg_bin("initdb"), "-D", str(self.data), "-U", self.db.user,
                    f"--pwfile={pwfile}", "--auth-local=peer", "--auth-host=scram-sha-256",
                    "--encoding=UTF8", "--locale=C.UTF-8",
                ]),
                what=f"{self.name} (initdb)",
                log_file=self.log_file,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'erpsync.conf'\n")

    def launch_config(self) -> str:
        return "\n".join([
            f"listen_addresses = '{self.db.host}'",
            f"port = {self.db.port}",
            f"unix_socket_directories = '{self.run_dir}'",
            f"wal_level = {self.wal_level}",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "shared_buffers = 128MB",
            "fsync = on",
            "",
        ])

    def launch(self) -> None:
        self._initdb()
        # Rewritten on every start so port changes in settings take effect.
        conf = self.data / "erpsync.conf"
        conf.write_text(self.launch_config())
        _chown(conf, "postgres")
        private_file(self.log_file)
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
                f"{self.name} failed to start (pg_ctl exited {result.returncode}); "
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
        with psycopg.connect(self._conninfo(self.db.dbname)) as conn:
            rows = conn.execute(
                "SELECT slot_name, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
                " FROM pg_replication_slots ORDER BY slot_name"
            ).fetchall()
        return {name: lag for name, lag in rows}

    def _create_database(self, dbname: str) -> None:
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
            if not exists:
                conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))

    def provision(self) -> None:
        erp = self.settings.erp
        self._create_database(erp.dbname)
        with psycopg.connect(self._conninfo(erp.dbname), autocommit=True) as conn:
            has_schema = conn.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = 'erp' AND table_name = 'items'"
            ).fetchone()
            if not has_schema:
                conn.execute((REFERENCE_DIR / "erp.postgres.sql").read_text())
        logins = {  # least-privilege logins: Debezium's capture user, erpsync's intake writer
            "erp-capture.sql": {"capture_user": erp.capture_user,
                                "capture_password": erp.capture_password.get_secret_value()},
            "erp-intake-writer.sql": {"intake_user": erp.intake_user,
                                      "intake_password": erp.intake_password.get_secret_value()},
        }
        for script, variables in logins.items():
            self._psql_file(DEBEZIUM_DIR / script, dbname=erp.dbname, variables=variables)

    def _psql_env(self) -> dict[str, str]:
        return dict(os.environ, PGPASSWORD=self.db.password.get_secret_value())

    def _psql(self, dbname: str) -> list[str]:
        return ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.db.host, "-p", str(self.db.port),
                "-U", self.db.user, "-d", dbname]

    def _psql_file(self, path: Path, *, dbname: str, variables: dict[str, str]) -> None:
        # Variables go through stdin (\set), not argv, so passwords never show up in `ps`.
        sets = "".join(f"\\set {k} '{_psql_quote(v)}'\n" for k, v in variables.items())
        run(
            [*self._psql(dbname), "-f", "-"],
            what=f"{self.name} ({path.name})",
            log_file=self.log_file.with_name(f"{self.name}-setup.log"),
            env=self._psql_env(),
            input_text=sets + path.read_text(),
        )


class OpsPostgres(Postgres):
    """erpsync's ops database in a PostgreSQL cluster of its own.

    Debezium's capture login holds REPLICATION on the ERP's cluster, and a logical decoding slot
    reads every database of its cluster: the ops database (exceptions, statuses, runs) must not be one.
    """

    wal_level = "replica"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "ops-db")

    @property
    def db(self) -> DatabaseSettings:
        return self.settings.ops

    def describe(self) -> dict[str, Any]:
        return Component.describe(self)

    def provision(self) -> None:
        self._create_database(self.db.dbname)
        self._move_from_erp_cluster()

    def _move_from_erp_cluster(self) -> None:
        """A stack made before the ops database had its own cluster kept it in the ERP's: move it here, once."""
        ops, erp = self.settings.ops, self.settings.erp
        if ops.dbname == erp.dbname or (ops.host, ops.port) == (erp.host, erp.port):
            return  # not two clusters: nothing to move (and the ERP's own database is never dropped)
        source = Postgres(self.settings)
        with psycopg.connect(source._conninfo("postgres"), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (ops.dbname,)).fetchone():
                return
        with psycopg.connect(self._conninfo(ops.dbname)) as conn:
            moved = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'sync'").fetchone()
        if not moved:
            log.warning("moving the ops database %s out of the ERP's cluster (%s) into its own (%s)",
                        ops.dbname, source.endpoint, self.endpoint)
            # Piped, never through a log: the dump holds the ops data.
            dump = subprocess.Popen(  # noqa: S603
                ["pg_dump", "--no-owner", "--no-privileges", "-h", erp.host, "-p", str(erp.port), "-U", erp.user,
                 "-d", ops.dbname],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=source._psql_env(),
            )
            restore = subprocess.run([*self._psql(ops.dbname), "-f", "-"], stdin=dump.stdout, capture_output=True,
                                     env=self._psql_env(), check=False)
            assert dump.stdout is not None
            dump.stdout.close()
            dump_err = dump.stderr.read().decode() if dump.stderr else ""
            if dump.wait() != 0 or restore.returncode != 0:
                raise StackError(f"{self.name}: moving {ops.dbname} out of the ERP's cluster failed: "
                                 f"{(dump_err or restore.stderr.decode()).strip()[-2000:]}")
        with psycopg.connect(source._conninfo("postgres"), autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(ops.dbname)))
        log.warning("dropped %s from the ERP's cluster: the capture login's replication right no longer reaches it",
                    ops.dbname)


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


# The broker's own login on its client listener (inter-broker traffic); its password is made when the
# storage is formatted and kept in the broker's directory (0600).
BROKER_USER = "erpsync-broker"
SCRAM_ITERATIONS = 4096
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"


def _scram_salted(user: str, password: str) -> str:
    """A --add-scram argument with a salted password (SCRAM's Hi(): PBKDF2-HMAC-SHA-512), never the password."""
    if not user or any(c in user for c in ",[]=\" ") :
        raise StackError(f"kafka: user name {user!r} is empty or contains one of , [ ] = \" or a space")
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, SCRAM_ITERATIONS)
    b64 = base64.b64encode
    return (f"{SASL_MECHANISM}=[name={user},salt={b64(salt).decode()},iterations={SCRAM_ITERATIONS},"
            f"saltedpassword={b64(salted).decode()}]")


class Kafka(Component):
    """Apache Kafka in KRaft combined mode (broker + controller), one node.

    Clients reach one listener, SASL/SCRAM-SHA-512 (SASL_SSL when a CA, certificate and key are
    configured); the controller listener stays PLAINTEXT on the same (loopback) host. The logins
    (erpsync's, the Connect worker's, the broker's own) are written when the storage is formatted.
    A data directory formatted earlier without them (a stack from before SASL), or a changed
    password, gets them from a brief start of the broker with its client listener PLAINTEXT on the
    loopback host, as such a stack ran before (Kafka 4.3's controller does not take
    AlterUserScramCredentials directly), then it starts locked down.
    """

    program = "kafka.Kafka"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "kafka")
        self.data = self.home / "data"

    @property
    def endpoint(self) -> str:
        return self.settings.kafka.bootstrap_servers

    @property
    def _credentials_file(self) -> Path:
        return self.home / "scram-credentials.sha256"

    def healthy(self) -> bool:
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415 - heavy import, only when used

        if not port_open(self.settings.kafka.host, self.settings.kafka.port):
            return False
        admin = AdminClient(self.settings.kafka.client_config() | {"socket.timeout.ms": 2000})
        try:
            meta = admin.list_topics(timeout=3)
        except Exception:  # noqa: BLE001 - any failure means "not healthy yet"
            return False
        return bool(meta.brokers)

    def _broker_password(self) -> str:
        path = self.home / "broker.password"
        if not path.exists():
            private_file(path, secrets.token_urlsafe(24))
        return path.read_text()

    def users(self) -> dict[str, str]:
        """Every SCRAM login of the cluster: name -> password."""
        s = self.settings
        return {s.kafka.user: s.kafka.password.get_secret_value(),
                s.connect.kafka_user: s.connect.kafka_password.get_secret_value(),
                BROKER_USER: self._broker_password()}

    def _properties(self, *, setup: bool = False) -> str:
        """server.properties; `setup`: the client listener PLAINTEXT, only to create the logins."""
        k = self.settings.kafka
        listener = [
            f"listeners=CLIENT://{k.host}:{k.port},CONTROLLER://{k.host}:{k.controller_port}",
            f"advertised.listeners=CLIENT://{k.host}:{k.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=CLIENT",
            f"listener.security.protocol.map=CLIENT:{'PLAINTEXT' if setup else k.security_protocol},"
            "CONTROLLER:PLAINTEXT",
        ]
        if not setup:
            listener += [
                f"sasl.enabled.mechanisms={SASL_MECHANISM}",
                f"sasl.mechanism.inter.broker.protocol={SASL_MECHANISM}",
                f"listener.name.client.{SASL_MECHANISM.lower()}.sasl.jaas.config={SCRAM_LOGIN_MODULE} required "
                f'username="{BROKER_USER}" password="{self._broker_password()}";',
            ]
        if k.ssl_ca_location and not setup:
            if not (k.ssl_certificate_location and k.ssl_key_location):
                raise StackError("kafka: ERPSYNC_KAFKA__SSL_CA_LOCATION is set; the local broker also needs its "
                                 "certificate and key: ERPSYNC_KAFKA__SSL_CERTIFICATE_LOCATION and "
                                 "ERPSYNC_KAFKA__SSL_KEY_LOCATION (PEM, key unencrypted PKCS#8)")
            listener += [
                "listener.name.client.ssl.keystore.type=PEM",
                f"listener.name.client.ssl.keystore.location={self.home / 'keystore.pem'}",
                "listener.name.client.ssl.truststore.type=PEM",
                f"listener.name.client.ssl.truststore.location={k.ssl_ca_location}",
            ]
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{k.host}:{k.controller_port}",
            *listener,
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

    def _credentials_digest(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self.users().items())).encode()).hexdigest()

    def launch_config(self) -> str:
        k = self.settings.kafka
        tls = "".join(p.read_text() for p in (k.ssl_certificate_location, k.ssl_key_location) if p and p.exists())
        return self._properties() + self._credentials_digest() + tls + LOG4J

    def launch(self) -> None:
        _write_log4j(self.settings.stack.home / "log4j2.properties")
        props = private_file(self.home / "server.properties", self._properties())  # holds the broker's password
        k = self.settings.kafka
        if k.ssl_certificate_location and k.ssl_key_location:
            private_file(self.home / "keystore.pem",
                         k.ssl_key_location.read_text().rstrip("\n") + "\n" + k.ssl_certificate_location.read_text())
        fresh = not (self.data / "meta.properties").exists()
        if fresh:
            cluster_id = kafka_cluster_id()
            scram = [arg for user, password in self.users().items()
                     for arg in ("--add-scram", _scram_salted(user, password))]
            _java_argfile(self.settings, self.home, ["kafka.tools.StorageTool", "format", "-t", cluster_id,
                                                     "-c", str(props), *scram],
                          heap="256m", what="kafka (storage format)", log_file=self.log_file,
                          log_output=False)  # it echoes the SCRAM records it writes
            private_file(self._credentials_file, self._credentials_digest())
        elif not self._credentials_current():
            self._set_credentials()
        self.process = spawn(_java(self.settings, "kafka.Kafka", str(props), heap=self.settings.stack.kafka_heap),
                             log_file=self.log_file, pid_file=self.pid_file, cwd=self.home)

    def _credentials_current(self) -> bool:
        try:
            return self._credentials_file.read_text() == self._credentials_digest()
        except FileNotFoundError:
            return False

    def _set_credentials(self) -> None:
        """Create or update every login on a broker started briefly with a PLAINTEXT loopback listener."""
        from confluent_kafka.admin import (  # type: ignore[attr-defined]  # noqa: PLC0415 - heavy, only when used
            AdminClient,
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )

        log.info("kafka: writing the SCRAM logins into a data directory formatted without them (or with other "
                 "passwords): the broker starts once with its client listener PLAINTEXT on %s", self.endpoint)
        props = private_file(self.home / "setup.properties", self._properties(setup=True))
        self.process = spawn(_java(self.settings, "kafka.Kafka", str(props), heap=self.settings.stack.kafka_heap),
                             log_file=self.log_file, pid_file=self.pid_file, cwd=self.home)
        try:
            plaintext: dict[str, Any] = {"bootstrap.servers": self.endpoint, "socket.timeout.ms": 2000,
                                         "logger": kafka_client_logger()}
            admin = AdminClient(plaintext)

            def up() -> bool:
                try:
                    return bool(admin.list_topics(timeout=3).brokers)
                except Exception:  # noqa: BLE001 - any failure means "not up yet"
                    return False

            if not wait_until(up, timeout_s=self.settings.stack.start_timeout_s, alive=self._alive):
                raise StackError(f"kafka failed to start to write its logins; see its log {self.log_file}\n"
                                 f"--- last lines ---\n{tail(self.log_file)}")
            info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
            futures = admin.alter_user_scram_credentials([UserScramCredentialUpsertion(user, info, password.encode())
                                                          for user, password in self.users().items()])
            for user, future in futures.items():
                try:
                    future.result(30)
                except Exception as exc:  # noqa: BLE001 - reported with the user's name
                    raise StackError(f"kafka: could not write the SCRAM login of {user!r}: {exc}") from None
        finally:
            self.stop()
            props.unlink(missing_ok=True)
            self.process = None
        private_file(self._credentials_file, self._credentials_digest())


class Connect(Component):
    """Kafka Connect distributed worker with the Debezium PostgreSQL and MariaDB plugins.

    Its REST API listens on the configured (loopback) host with HTTP basic auth (Kafka's
    BasicAuthSecurityRestExtension, a JAAS PropertyFileLoginModule over a 0600 credentials file);
    its Kafka clients log in with SCRAM as the Connect worker's user.
    """

    program = "ConnectDistributed"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "connect")

    @property
    def endpoint(self) -> str:
        return self.settings.connect.url

    @property
    def jaas_file(self) -> Path:
        return self.home / "rest-jaas.conf"

    @property
    def credentials_file(self) -> Path:
        return self.home / "rest-credentials.properties"

    def healthy(self) -> bool:
        try:
            plugins = ConnectClient.of(self.settings.connect).plugins(timeout_s=3)
        except (StackError, OSError, ValueError):
            return False
        classes = {p.get("class", "") for p in plugins}
        return all(c in classes for c in _REQUIRED_PLUGINS)

    def _files(self) -> dict[Path, str]:
        c = self.settings.connect
        if not c.user:
            raise StackError("connect: ERPSYNC_CONNECT__USER is empty (an empty credentials file admits anyone)")
        worker = connect_worker_properties(self.settings)
        return {
            self.home / "connect-distributed.properties": "".join(f"{k}={v}\n" for k, v in worker.items()),
            self.jaas_file: connect_rest_jaas(self.credentials_file),
            self.credentials_file: f"{_properties_escape(c.user)}="
                                   f"{_properties_escape(c.password.get_secret_value())}\n",
        }

    def launch_config(self) -> str:
        env = connector_env(self.settings)
        return LOG4J + "".join(self._files().values()) + json.dumps(sorted((k, v) for k, v in env.items()
                                                                   if k.startswith("ERPSYNC_")))

    def launch(self) -> None:
        _write_log4j(self.settings.stack.home / "log4j2.properties")
        for path, text in self._files().items():
            private_file(path, text)
        self.process = spawn(
            _java(self.settings, "org.apache.kafka.connect.cli.ConnectDistributed",
                  str(self.home / "connect-distributed.properties"), heap=self.settings.stack.connect_heap,
                  jvm_options=[f"-Djava.security.auth.login.config={self.jaas_file}"]),
            log_file=self.log_file,
            pid_file=self.pid_file,
            env=connector_env(self.settings),
            cwd=self.home,  # what it writes to its working directory (a JVM crash log) stays out of the checkout
        )

    def provision(self) -> None:
        client = ConnectClient.of(self.settings.connect)
        connectors = load_connector_configs()
        for connector in connectors:
            client.apply(connector)
        for connector in connectors:
            client.wait_running(connector["name"], timeout_s=self.settings.stack.start_timeout_s,
                                log_file=self.log_file)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if info["state"] == "healthy":
            info["connectors"] = ConnectClient.of(self.settings.connect).states()
        return info


class SchemaRegistryServer(Component):
    """Apicurio Registry from Maven Central, serving the Confluent-compatible API, stored in PostgreSQL.

    Its storage is a database of erpsync's own PostgreSQL (ops-db) with its own login, so schema ids survive
    `stack down`/`up` (records in topics name their writer schema by id). At start every schema of
    the contract is registered under its topic's subject with its compatibility mode.
    """

    program = "apicurio-registry-app"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "registry")

    @property
    def endpoint(self) -> str:
        return self.settings.registry.url

    def healthy(self) -> bool:
        r = self.settings.registry
        try:
            with urllib.request.urlopen(f"http://{r.host}:{r.port}/health/ready", timeout=3) as resp:  # noqa: S310
                ready = json.load(resp).get("status") == "UP"
            with urllib.request.urlopen(f"{r.url}/subjects", timeout=3) as resp:  # noqa: S310
                return ready and isinstance(json.load(resp), list)
        except (OSError, ValueError):
            return False

    def _runner_jar(self) -> Path:
        found = sorted((self.settings.stack.home / "jvm" / "apicurio").glob("apicurio-registry-app-*-runner.jar"))
        if not found:
            raise StackError(f"registry: no Apicurio Registry runner jar under {self.settings.stack.home / 'jvm'}; "
                             "`erpsync stack up` fetches it with debezium/pom.xml")
        return found[-1]

    def _ensure_database(self) -> None:
        """Its login and database in erpsync's own PostgreSQL (ops-db; idempotent, password follows the settings)."""
        r, ops = self.settings.registry, self.settings.ops
        admin = psycopg.conninfo.make_conninfo(host=ops.host, port=ops.port, dbname="postgres", user=ops.user,
                                               password=ops.password.get_secret_value(), connect_timeout=3)
        sql = psycopg.sql
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r.user,)).fetchone()
            statement = sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}" if exists else "CREATE ROLE {} LOGIN PASSWORD {}")
            conn.execute(statement.format(sql.Identifier(r.user), sql.Literal(r.password.get_secret_value())))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (r.dbname,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(r.dbname),
                                                                          sql.Identifier(r.user)))

    def _argv(self) -> list[str]:
        r, ops = self.settings.registry, self.settings.ops
        return [
            "java", f"-Xms{r.heap}", f"-Xmx{r.heap}", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
            f"-Dquarkus.http.host={r.host}", f"-Dquarkus.http.port={r.port}",
            "-Dapicurio.storage.kind=sql", "-Dapicurio.storage.sql.kind=postgresql",
            f"-Dapicurio.datasource.url=jdbc:postgresql://{ops.host}:{ops.port}/{r.dbname}",
            f"-Dapicurio.datasource.username={r.user}",
            # Its defaults hold 20 idle connections open; the stack's PostgreSQL serves everyone.
            "-Dapicurio.datasource.jdbc.initial-size=2", "-Dapicurio.datasource.jdbc.min-size=2",
            "-Dapicurio.datasource.jdbc.max-size=10",
            f"-Djava.io.tmpdir={self.home}",
            "-jar", str(self._runner_jar()),
        ]

    def launch_config(self) -> str:
        return json.dumps([self._argv(), self.settings.registry.password.get_secret_value()])

    def launch(self) -> None:
        r = self.settings.registry
        self._ensure_database()
        self.process = spawn(
            self._argv(),
            log_file=self.log_file,
            pid_file=self.pid_file,
            # The password through the environment (Quarkus reads APICURIO_DATASOURCE_PASSWORD), never argv.
            env=dict(os.environ, APICURIO_DATASOURCE_PASSWORD=r.password.get_secret_value()),
            cwd=self.home,
        )

    def provision(self) -> None:
        from erpsync.channels import load_channels  # noqa: PLC0415 - only what provisioning needs
        from erpsync.subjects import register  # noqa: PLC0415
        from schemas.registry import SchemaRegistry  # noqa: PLC0415

        try:
            register(self.endpoint, SchemaRegistry.load(), load_channels())
        except Exception as exc:  # noqa: BLE001 - any client error: name the component and its log
            raise StackError(f"registry: registering the Avro schemas at {self.endpoint} failed: {exc}; "
                             f"see its log {self.log_file}") from exc

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if info["state"] == "healthy":
            try:
                with urllib.request.urlopen(f"{self.endpoint}/subjects", timeout=3) as resp:  # noqa: S310
                    info["subjects"] = len(json.load(resp))
            except (OSError, ValueError):
                info["subjects"] = None
        return info


def connect_rest_jaas(credentials_file: Path) -> str:
    """The JAAS configuration of Connect's REST basic auth: users and passwords in a properties file."""
    return ("KafkaConnect {\n"
            "  org.apache.kafka.connect.rest.basic.auth.extension.PropertyFileLoginModule required\n"
            f'  file="{credentials_file}";\n'
            "};\n")


def _properties_escape(text: str) -> str:
    """A key or value for a Java properties file: anything but [A-Za-z0-9._-] as a u-escape (UTF-16 units)."""
    out = []
    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch in "._-"):
            out.append(ch)
        else:
            units = ch.encode("utf-16-be")
            out.extend(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))
    return "".join(out)


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


# The Connect worker's Kafka login, resolved from its environment by the env config provider, so
# that no file holds the password (the same text in docker-compose.yml).
CONNECT_KAFKA_JAAS = (f"{SCRAM_LOGIN_MODULE} required "
                      'username="${env:ERPSYNC_CONNECT_KAFKA_USER}" password="${env:ERPSYNC_CONNECT_KAFKA_PASSWORD}";')


def connect_kafka_client_properties(settings: Settings) -> dict[str, str]:
    """How a Java client of the Connect worker logs in to Kafka (SCRAM; TLS with the CA when configured)."""
    props = {
        "security.protocol": settings.kafka.security_protocol,
        "sasl.mechanism": SASL_MECHANISM,
        "sasl.jaas.config": CONNECT_KAFKA_JAAS,
    }
    if settings.kafka.ssl_ca_location:
        props |= {"ssl.truststore.type": "PEM", "ssl.truststore.location": str(settings.kafka.ssl_ca_location)}
    return props


def connect_worker_properties(settings: Settings) -> dict[str, str]:
    """The Connect worker's settings; docker-compose.yml sets the same (a test compares them)."""
    c = settings.connect
    security = connect_kafka_client_properties(settings)
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
        # After losing its Kafka coordinator (a broker outage), a worker's connectors are held back for
        # this long waiting for the "lost" worker (default 5 minutes, capture stopped meanwhile):
        # with one worker, or workers that restart quickly, give them back at once.
        "scheduled.rebalance.max.delay.ms": "0",
        "listeners": f"http://{c.host}:{c.port}",
        "rest.advertised.host.name": c.host,
        "rest.advertised.port": str(c.port),
        # HTTP basic auth on every REST call (users in a JAAS PropertyFileLoginModule file).
        "rest.extension.classes": "org.apache.kafka.connect.rest.basic.auth.extension.BasicAuthSecurityRestExtension",
        "plugin.path": str(settings.stack.home / "jvm" / "plugins"),
        # Connector JSONs read hosts and credentials as ${env:...}: the same files serve the local
        # stack and docker-compose, and no password is stored in a connector config.
        "config.providers": "env",
        "config.providers.env.class": "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
        # The worker's own clients, and the producers, consumers and admin clients it makes for
        # connectors (they do not inherit the worker's security settings).
        **{f"{prefix}{k}": v for prefix in ("", "producer.", "consumer.", "admin.") for k, v in security.items()},
    }


def connector_env(settings: Settings) -> dict[str, str]:
    """The environment the ${env:...} placeholders read (the Connect worker's): connector JSONs, Kafka login."""
    env = dict(os.environ)
    for prefix, db in (("ERP", settings.erp), ("WMS", settings.wms)):
        env.update({
            f"ERPSYNC_{prefix}_HOST": db.host,
            f"ERPSYNC_{prefix}_PORT": str(db.port),
            f"ERPSYNC_{prefix}_DBNAME": db.dbname,
            f"ERPSYNC_{prefix}_CAPTURE_USER": db.capture_user,
            f"ERPSYNC_{prefix}_CAPTURE_PASSWORD": db.capture_password.get_secret_value(),
        })
    env.update({
        "ERPSYNC_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "ERPSYNC_KAFKA_SECURITY_PROTOCOL": settings.kafka.security_protocol,
        "ERPSYNC_KAFKA_SSL_CA_LOCATION": str(settings.kafka.ssl_ca_location or ""),
        # raw change topics are created by Connect with this many partitions (keyed by row)
        "ERPSYNC_KAFKA_PARTITIONS": str(settings.kafka.partitions),
        "ERPSYNC_CONNECT_KAFKA_USER": settings.connect.kafka_user,
        "ERPSYNC_CONNECT_KAFKA_PASSWORD": settings.connect.kafka_password.get_secret_value(),
    })
    return env


def _java(settings: Settings, main: str, *args: str, heap: str, jvm_options: list[str] | None = None) -> list[str]:
    """A JVM command line on the Kafka/Connect classpath fetched by debezium/pom.xml."""
    return [
        "java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={settings.stack.home / 'log4j2.properties'}", *(jvm_options or []),
        "-cp", str(settings.stack.home / "jvm" / "lib" / "*"), main, *args,
    ]


def _java_argfile(settings: Settings, home: Path, main_and_args: list[str], *, heap: str, what: str,
                  log_file: Path, log_output: bool = True) -> None:
    """Run a Kafka tool whose arguments hold credentials.

    They go in a 0600 argument file (java @file), so they show up neither in `ps` nor in the log,
    which records the command line.
    """
    argfile = home / ".java-args"

    def quote(arg: str) -> str:
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'

    private_file(argfile, "\n".join(quote(a) for a in main_and_args) + "\n")
    try:
        run(_java(settings, f"@{argfile}", heap=heap), what=what, log_file=log_file, log_output=log_output)
    finally:
        argfile.unlink(missing_ok=True)


# The JVMs' logging (Kafka, Connect): console only, into the component's 0600 log file.
LOG4J = "\n".join([
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
    # Validating a connector config (PUT .../config/validate, also on every PUT of a config)
    # makes the connector class test a connection and log the failure with the resolved
    # JDBC URL and exception text: with a ${env:...} placeholder in a host field, a secret.
    # The REST response still says what failed.
    "logger.pgvalidate.name = io.debezium.connector.postgresql.PostgresConnector",
    "logger.pgvalidate.level = OFF",
    "logger.binlogvalidate.name = io.debezium.connector.binlog.BinlogConnector",
    "logger.binlogvalidate.level = OFF",
    "",
])


def _write_log4j(path: Path) -> None:
    private_file(path, LOG4J)


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
    return [Redis(settings), Postgres(settings), OpsPostgres(settings), MariaDB(settings), Kafka(settings),
            Connect(settings), SchemaRegistryServer(settings)]
