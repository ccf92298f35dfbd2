"""docker-compose.yml cannot run here; these checks keep it consistent with the local stack."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from erpsync.cli import build_parser
from erpsync.settings import Settings
from erpsync.stack.components import connect_worker_properties, load_connector_configs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def _pom_property(name: str) -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    value = ET.parse(ROOT / "debezium" / "pom.xml").getroot().find(f"m:properties/m:{name}", ns)
    assert value is not None and value.text
    return value.text


def test_topology(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "kafka", "connect", "connectors", "schema-registry", "erp", "wms", "redis", "flows"
    }


def test_images_match_the_local_bill_of_materials(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["image"] == f"apache/kafka:{_pom_property('kafka.version')}"
    assert services["connect"]["image"].endswith(f":{_pom_property('debezium.postgres.version')}")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_connect_worker_settings_match_the_local_worker(compose: dict[str, Any]) -> None:
    env = compose["services"]["connect"]["environment"]
    # The Debezium image maps a few names directly and every CONNECT_X_Y to x.y.
    direct = {"GROUP_ID": "group.id", "CONFIG_STORAGE_TOPIC": "config.storage.topic",
              "OFFSET_STORAGE_TOPIC": "offset.storage.topic", "STATUS_STORAGE_TOPIC": "status.storage.topic",
              "KEY_CONVERTER": "key.converter", "VALUE_CONVERTER": "value.converter"}
    compose_props = {direct[k]: v for k, v in env.items() if k in direct}
    compose_props |= {k[len("CONNECT_"):].lower().replace("_", "."): v
                      for k, v in env.items() if k.startswith("CONNECT_")}
    local = connect_worker_properties(Settings())
    host_specific = {"bootstrap.servers", "listeners", "rest.advertised.host.name",
                     "rest.advertised.port", "plugin.path"}
    for key, value in local.items():
        if key not in host_specific:
            assert compose_props.get(key) == value, key


def test_connector_placeholders_are_provided_to_connect(compose: dict[str, Any]) -> None:
    env = compose["services"]["connect"]["environment"]
    for connector in load_connector_configs():
        for value in connector["config"].values():
            for var in re.findall(r"\$\{env:([A-Z_]+)\}", value):
                assert var in env, f"{connector['name']} reads ${{env:{var}}}, not set for connect"


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
    for svc in ("connectors", "flows"):
        args = parser.parse_args(compose["services"][svc]["command"])
        assert callable(args.func)


def test_no_secret_literals(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for match in re.finditer(r"PASSWORD:\s*(\S+)", text):
        assert match.group(1).startswith("${"), match.group(0)


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


def test_the_container_reads_channels_from_a_directory_the_deployment_provides(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    env = compose["x-erpsync-env"]
    channels_dir = env["ERPSYNC_FLOWS__CHANNELS_DIR"]
    assert f"ENV ERPSYNC_FLOWS__CHANNELS_DIR={channels_dir}" in dockerfile
    assert f"COPY erpsync/config/channels {channels_dir}" in dockerfile  # the reference channels by default
    mounts = {m.split(":")[1]: m.split(":")[0] for m in compose["services"]["flows"]["volumes"] if ":" in m}
    assert mounts[channels_dir] == "./erpsync/config/channels" and (ROOT / mounts[channels_dir]).is_dir()
    assert Settings.model_validate({"flows": {"channels_dir": channels_dir}}).flows.channels_dir == Path(channels_dir)
