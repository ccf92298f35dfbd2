"""Install what the local stack needs and is missing: Debian packages and the JVM jars."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

from erpsync.stack.process import StackError, run

log = logging.getLogger(__name__)

# Debian package -> a file that proves it is installed.
_PACKAGES = {
    "postgresql": "/usr/lib/postgresql/*/bin/pg_ctl",
    "mariadb-server": "/usr/sbin/mariadbd",
    "mariadb-client": "/usr/bin/mariadb",
    "redis-server": "/usr/bin/redis-server",
    "openjdk-17-jre-headless": "/usr/bin/java",
    "maven": "/usr/bin/mvn",
    "kcat": "/usr/bin/kcat",  # how channel teams read topics; the registry's integration test uses it
}


def missing_packages() -> list[str]:
    return [pkg for pkg, probe in _PACKAGES.items() if not glob.glob(probe)]


def ensure_packages(log_file: Path) -> None:
    """apt-get install the missing Debian packages (root only; otherwise say what to install)."""
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise StackError(f"install: missing Debian packages {' '.join(missing)}; install them as root")
    log.info("installing Debian packages: %s", " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], what="install (apt-get update)", log_file=log_file, env=env)
    run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        what="install (apt-get install)",
        log_file=log_file,
        env=env,
    )


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL server binary (Debian keeps them out of PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise StackError(f"postgres: {name} not found; is the postgresql package installed?")
    return path


def ensure_jars(pom: Path, jvm_dir: Path, log_file: Path) -> None:
    """Fetch the Kafka/Connect classpath, Debezium plugins and Apicurio Registry described by pom into jvm_dir.

    Maven's local repository caches the downloads; a stamp with the pom's hash makes this a no-op
    until the bill of materials changes.
    """
    stamp = jvm_dir / ".pom.sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and (jvm_dir / "lib").is_dir():
        return
    log.info("fetching Kafka, Connect, Debezium and Apicurio Registry jars with Maven into %s", jvm_dir)
    for sub in ("lib", "plugins", "apicurio", "target"):
        shutil.rmtree(jvm_dir / sub, ignore_errors=True)
    jvm_dir.mkdir(parents=True, exist_ok=True)
    try:
        run(
            ["mvn", "-B", "-q", "-f", str(pom), "package", f"-Dstack.dir={jvm_dir}"],
            what="install (maven: Kafka, Connect, Debezium, Apicurio Registry jars)",
            log_file=log_file,
        )
    except FileNotFoundError as exc:
        raise StackError("install: mvn not found; install the maven package") from exc
    except subprocess.SubprocessError as exc:  # pragma: no cover - defensive
        raise StackError(f"install: maven failed: {exc}; see {log_file}") from exc
    _fetch_registry(pom, jvm_dir, log_file)
    stamp.write_text(digest)


def _fetch_registry(pom: Path, jvm_dir: Path, log_file: Path) -> None:
    """Apicurio Registry's Quarkus distribution (Maven Central) unpacked into jvm_dir/apicurio.

    Fetched without its descriptor (``transitive=false``, dependency plugin 2.8's ``get``, which
    can copy to a file): the distribution's parent POM is not on Maven Central, which makes the
    pom's own unpack goal fail. Maven's local repository still caches the download.
    """
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(pom).getroot().findtext(  # noqa: S314 - the project's own pom
        "m:properties/m:apicurio.version", namespaces=ns)
    if not version:
        raise StackError(f"install: no apicurio.version property in {pom}")
    archive = jvm_dir / f"apicurio-registry-app-{version}-all.tar.gz"
    run(
        ["mvn", "-B", "-q", "org.apache.maven.plugins:maven-dependency-plugin:2.8:get",
         f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all", "-Dtransitive=false",
         f"-Ddest={archive}"],
        what="install (maven: Apicurio Registry)",
        log_file=log_file,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(jvm_dir / "apicurio", filter="data")  # Python >= 3.11.4: no path escapes
    archive.unlink()
