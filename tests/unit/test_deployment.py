"""docker-compose.yml cannot run here; these checks keep it consistent with the local stack."""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from erpsync.cli import build_parser
from erpsync.cluster import Cluster
from erpsync.settings import SASL_MECHANISM, RedisSettings, Settings, StackSettings
from erpsync.stack.components import (
    REDIS_PIPELINE_RULES,
    REDIS_READER_RULES,
    Kafka,
    connect_worker_properties,
    load_connector_configs,
    redis_acl,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def flows(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pipeline's services (`erpsync run`): one per process of the cluster."""
    return {name: svc for name, svc in compose["services"].items() if svc.get("command") == ["run"]}


def settings_of(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a container with this environment builds at start-up (and nothing else of ours)."""
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("ERPSYNC_")]:
            m.delenv(name)
        for name, value in env.items():
            m.setenv(name, value)
        return Settings()


def _pom_property(name: str) -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    value = ET.parse(ROOT / "debezium" / "pom.xml").getroot().find(f"m:properties/m:{name}", ns)
    assert value is not None and value.text
    return value.text


def test_topology(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) - set(flows(compose)) == {
        "kafka", "connect", "connectors", "schema-registry", "schemas", "erp", "ops-db", "wms", "redis"
    }
    assert set(flows(compose)) == {"flows-0", "flows-1"}  # the pipeline: a cluster of two processes


def test_images_match_the_local_bill_of_materials(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["image"] == f"apache/kafka:{_pom_property('kafka.version')}"
    assert services["connect"]["image"].endswith(f":{_pom_property('debezium.postgres.version')}")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["schema-registry"]["image"] == f"apicurio/apicurio-registry:{_pom_property('apicurio.version')}"


def test_the_registry_is_apicurio_on_postgres_as_in_the_local_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    registry = services["schema-registry"]["environment"]
    local = Settings().registry
    assert registry["APICURIO_STORAGE_KIND"] == "sql" and registry["APICURIO_STORAGE_SQL_KIND"] == "postgresql"
    # Like the local stack, the registry keeps its schemas in erpsync's own database, not the ERP's.
    assert registry["APICURIO_DATASOURCE_URL"] == f"jdbc:postgresql://ops-db:5432/{local.dbname}"
    assert registry["APICURIO_DATASOURCE_USERNAME"] == services["ops-db"]["environment"]["ERPSYNC_REGISTRY_USER"]
    init = (ROOT / "debezium" / "docker-init" / "10-ops.sh").read_text()
    assert f"CREATE DATABASE {local.dbname} OWNER :\"registry_user\"" in init
    # erpsync writes the Confluent wire format through the registry's Confluent-compatible API, and
    # the schemas are registered before the flows start.
    for svc in flows(compose).values():
        url = svc["environment"]["ERPSYNC_KAFKA__SCHEMA_REGISTRY_URL"]
        assert url == "http://schema-registry:8080/apis/ccompat/v7" and local.url.endswith("/apis/ccompat/v7")
        assert svc["depends_on"]["schemas"] == {"condition": "service_completed_successfully"}


def test_connect_worker_settings_match_the_local_worker(compose: dict[str, Any]) -> None:
    env = compose["services"]["connect"]["environment"]
    # The Debezium image maps a few names directly and every CONNECT_X_Y to x.y.
    direct = {"GROUP_ID": "group.id", "CONFIG_STORAGE_TOPIC": "config.storage.topic",
              "OFFSET_STORAGE_TOPIC": "offset.storage.topic", "STATUS_STORAGE_TOPIC": "status.storage.topic",
              "KEY_CONVERTER": "key.converter", "VALUE_CONVERTER": "value.converter"}
    compose_props = {direct[k]: v for k, v in env.items() if k in direct}
    # "$$" is compose's escape of "$": the worker sees ${env:...} placeholders, as locally.
    compose_props |= {k[len("CONNECT_"):].lower().replace("_", "."): v.replace("$$", "$")
                      for k, v in env.items() if k.startswith("CONNECT_")}
    local = connect_worker_properties(Settings())
    host_specific = {"bootstrap.servers", "listeners", "rest.advertised.host.name",
                     "rest.advertised.port", "plugin.path"}
    for key, value in local.items():
        if key not in host_specific:
            assert compose_props.get(key) == value, key


def test_connector_placeholders_are_provided_to_connect(compose: dict[str, Any]) -> None:
    env = compose["services"]["connect"]["environment"]
    values = [(c["name"], v) for c in load_connector_configs() for v in c["config"].values()]
    values += [("the worker", v) for v in connect_worker_properties(Settings()).values()]
    assert any("${env:ERPSYNC_CONNECT_KAFKA_PASSWORD}" in v for _, v in values)
    for name, value in values:
        for var in re.findall(r"\$\{env:([A-Z_]+)\}", value):
            assert var in env, f"{name} reads ${{env:{var}}}, not set for connect"


def test_databases_are_configured_for_capture(compose: dict[str, Any]) -> None:
    erp = compose["services"]["erp"]
    assert "wal_level=logical" in erp["command"]
    wms = compose["services"]["wms"]["command"]
    assert "--binlog-format=ROW" in wms and "--binlog-row-image=FULL" in wms
    for svc in ("erp", "wms"):
        mounts = compose["services"][svc]["volumes"]
        assert "./reference:/erpsync/reference:ro" in mounts and "./debezium:/erpsync/debezium:ro" in mounts
        for mount in mounts:
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), mount


def test_erpsync_services_run_real_commands(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for svc in ("connectors", "schemas", *flows(compose)):
        args = parser.parse_args(compose["services"][svc]["command"])
        assert callable(args.func)


def test_no_secret_literals(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for match in re.finditer(r"PASSWORD:\s+(\S+)", text):
        assert match.group(1).startswith("${"), match.group(0)
    for match in re.finditer(r'password="([^"]*)"', text):  # JAAS logins
        assert match.group(1).startswith(("${", "$${")), match.group(0)


def test_every_data_file_of_the_package_is_shipped() -> None:
    """A non-editable install (the container image) must carry schemas, mappings, channels, SQL."""
    import fnmatch  # noqa: PLC0415
    import tomllib  # noqa: PLC0415

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["erpsync"]
    package = ROOT / "erpsync"
    data = [p.relative_to(package).as_posix() for p in package.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert data, "no data files found"
    missing = [f for f in data if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert missing == []


def test_kafka_listener_matches_the_local_broker(compose: dict[str, Any], tmp_path: Path) -> None:
    """SASL/SCRAM on the client listener, the controller PLAINTEXT on loopback, in both."""
    env = compose["services"]["kafka"]["environment"]
    local = dict(line.split("=", 1) for line in
                 Kafka(Settings(stack=StackSettings(home=tmp_path)))._properties().splitlines() if "=" in line)
    for key in ("listener.security.protocol.map", "sasl.enabled.mechanisms", "sasl.mechanism.inter.broker.protocol",
                "controller.listener.names", "inter.broker.listener.name"):
        assert env["KAFKA_" + key.upper().replace(".", "_")] == local[key], key
    assert local["listener.security.protocol.map"] == "CLIENT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert local["sasl.enabled.mechanisms"] == SASL_MECHANISM == "SCRAM-SHA-512"
    assert "CONTROLLER://localhost:9093" in env["KAFKA_LISTENERS"]
    assert "ports" not in compose["services"]["kafka"]


def test_scram_logins_are_the_settings_logins(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]["environment"]
    defaults = Settings()
    assert kafka["ERPSYNC_KAFKA_USER"] == defaults.kafka.user
    assert kafka["ERPSYNC_CONNECT_KAFKA_USER"] == defaults.connect.kafka_user
    assert compose["x-capture-env"]["ERPSYNC_CONNECT_KAFKA_USER"] == defaults.connect.kafka_user
    erpsync = compose["x-erpsync-env"]
    assert erpsync["ERPSYNC_KAFKA__USER"] == defaults.kafka.user
    assert erpsync["ERPSYNC_CONNECT__USER"] == compose["services"]["connect"]["environment"]["ERPSYNC_CONNECT_USER"]


def test_redis_acl_of_compose_is_the_local_acl(tmp_path: Path) -> None:
    """Run the compose entrypoint's ACL writer and compare its file with the local stack's, byte for byte."""
    script = (ROOT / "debezium" / "docker-init" / "redis-acl.sh").read_text()
    assert "/data/users.acl" in script and 'exec docker-entrypoint.sh "$@"' in script
    local = tmp_path / "redis-acl.sh"
    local.write_text(script.replace("/data/users.acl", str(tmp_path / "users.acl"))
                     .replace('exec docker-entrypoint.sh "$@"', "true"))
    r = RedisSettings(password="pipe-Secret 1", reader_password="read$Secret`2")  # type: ignore[arg-type]
    env = dict(os.environ, ERPSYNC_REDIS_USER=r.user, ERPSYNC_REDIS_PASSWORD=r.password.get_secret_value(),
               ERPSYNC_REDIS_READER_USER=r.reader_user,
               ERPSYNC_REDIS_READER_PASSWORD=r.reader_password.get_secret_value())
    subprocess.run(["sh", str(local)], env=env, check=True)
    assert (tmp_path / "users.acl").read_text() == redis_acl(r)
    assert (tmp_path / "users.acl").stat().st_mode & 0o077 == 0
    assert REDIS_PIPELINE_RULES in script and REDIS_READER_RULES in script


def test_only_authenticated_services_are_published(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "ports" not in services["redis"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"
    connect = services["connect"]["environment"]
    assert connect["CONNECT_REST_EXTENSION_CLASSES"].endswith("BasicAuthSecurityRestExtension")
    assert "java.security.auth.login.config" in connect["KAFKA_OPTS"]
    assert "-u" in services["connect"]["healthcheck"]["test"][1]


def test_ops_database_has_its_own_cluster(compose: dict[str, Any]) -> None:
    env = compose["x-erpsync-env"]
    assert env["ERPSYNC_OPS__HOST"] == "ops-db" != env["ERPSYNC_ERP__HOST"]
    assert compose["services"]["ops-db"]["environment"]["POSTGRES_DB"] == Settings().ops.dbname
    assert Settings().ops.dbname not in (ROOT / "debezium" / "docker-init" / "10-erp.sh").read_text()
    assert all("ops-db" in svc["depends_on"] for svc in flows(compose).values())


def test_a_pipeline_that_dies_is_restarted(compose: dict[str, Any]) -> None:
    for svc in flows(compose).values():
        assert svc["restart"] in ("unless-stopped", "always", "on-failure")
        # time for a clean stop (final snapshot) before docker kills it
        assert int(svc["stop_grace_period"].rstrip("s")) >= 10


def test_the_pipeline_services_are_one_cluster(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each process has its own id, every process lists them all, each keeps its own share of the snapshots."""
    services = flows(compose)
    clusters = {name: Cluster.of(settings_of(svc["environment"], monkeypatch)) for name, svc in services.items()}
    by_id = {c.process_id: name for name, c in clusters.items()}
    assert sorted(by_id) == list(range(len(services))) and len(services) >= 2  # distinct ids 0..N-1
    for cluster in clusters.values():
        assert cluster.processes == len(services)
        # address i is the service of process i, at the port its process listens on
        assert [a.rsplit(":", 1)[0] for a in cluster.addresses] == [by_id[i] for i in range(len(services))]
        assert all(int(a.rsplit(":", 1)[1]) > 0 for a in cluster.addresses)
    assert len({c.addresses for c in clusters.values()}) == 1 and len({c.total_workers for c in clusters.values()}) == 1

    def recovery_volume(name: str) -> str:
        """The named volume holding the recovery directory of this service's process."""
        recovery = settings_of(services[name]["environment"], monkeypatch).recovery_dir
        held = [m.split(":") for m in services[name]["volumes"] if recovery.is_relative_to(m.split(":")[1])]
        assert len(held) == 1 and held[0][0] in compose["volumes"] and held[0][2:] != ["ro"], held
        return str(held[0][0])

    volumes = {name: recovery_volume(name) for name in services}
    assert len(set(volumes.values())) == len(services)  # each process its own share, none lost to another

    def common(name: str) -> dict[str, Any]:
        svc = services[name]
        env = {k: v for k, v in svc["environment"].items() if k != "ERPSYNC_FLOWS__PROCESS_ID"}
        return {**svc, "environment": env, "volumes": [m for m in svc["volumes"] if m.split(":")[0] != volumes[name]]}

    first, *others = services
    for name in others:  # the same image, command, settings and mounts otherwise
        assert common(name) == common(first), name
    assert common(first)["environment"] == {**compose["x-erpsync-env"],
                                            "ERPSYNC_FLOWS__ADDRESSES": services[first]["environment"][
                                                "ERPSYNC_FLOWS__ADDRESSES"]}


def test_topics_are_partitioned_for_the_cluster(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Connect creates the raw topics with the partition count erpsync creates its own with; enough for every worker."""
    connect = compose["services"]["connect"]["environment"]
    for svc in flows(compose).values():
        settings = settings_of(svc["environment"], monkeypatch)
        assert int(connect["ERPSYNC_KAFKA_PARTITIONS"]) == settings.kafka.partitions
        assert settings.kafka.partitions >= Cluster.of(settings).total_workers


def test_the_container_reads_channels_from_a_directory_the_deployment_provides(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    env = compose["x-erpsync-env"]
    channels_dir = env["ERPSYNC_FLOWS__CHANNELS_DIR"]
    assert f"ENV ERPSYNC_FLOWS__CHANNELS_DIR={channels_dir}" in dockerfile
    assert f"COPY erpsync/config/channels {channels_dir}" in dockerfile  # the reference channels by default
    for svc in flows(compose).values():
        mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"] if ":" in m}
        assert mounts[channels_dir] == "./erpsync/config/channels" and (ROOT / mounts[channels_dir]).is_dir()
    assert Settings.model_validate({"flows": {"channels_dir": channels_dir}}).flows.channels_dir == Path(channels_dir)
