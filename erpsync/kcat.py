"""`erpsync kcat ARGS...`: kcat, logged in to the pipeline's Kafka as erpsync.

The login (SASL/SCRAM, TLS when configured) goes in a private properties file for kcat's ``-F``,
never on a command line. Debian's kcat links librdkafka 2.0.2, whose SCRAM exchange Kafka 4 rejects
("invalid credentials"; fixed in librdkafka 2.6.1, confluentinc/librdkafka#4895), so kcat runs with
the librdkafka that confluent-kafka bundles (same C ABI) when there is one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import confluent_kafka

from erpsync.settings import Settings


def bundled_librdkafka() -> Path | None:
    """The librdkafka shipped in confluent-kafka's wheel (``confluent_kafka.libs``), if any."""
    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    return found[0] if found else None


@contextmanager
def kcat_command(settings: Settings) -> Iterator[tuple[list[str], dict[str, str]]]:
    """(argv prefix, environment) that run kcat logged in; the files live as long as the context."""
    kcat = shutil.which("kcat")
    if kcat is None:
        raise FileNotFoundError("kcat is not installed (Debian package kcat; `erpsync stack up` installs it)")
    properties = {k: v for k, v in settings.kafka.client_config().items() if isinstance(v, str)}
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="erpsync-kcat-") as tmp:
        config = Path(tmp) / "kafka.properties"
        config.touch(mode=0o600)
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        lib = bundled_librdkafka()
        if lib is not None:
            (Path(tmp) / "librdkafka.so.1").symlink_to(lib)
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (tmp, env.get("LD_LIBRARY_PATH", "")) if p)
        yield [kcat, "-F", str(config)], env


def run(settings: Settings, args: Sequence[str]) -> int:
    with kcat_command(settings) as (argv, env):
        return subprocess.run([*argv, *args], env=env, check=False).returncode
