"""Kafka with TLS: given a CA, a certificate and a key, the stack's broker serves SASL_SSL and clients verify it.

A second, throw-away broker (its own home and ports, the stack's jars) with a CA made for the test.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from erpsync.settings import Settings
from erpsync.stack.components import Kafka


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", f"/CN={name}"], check=True, capture_output=True)
    return key, cert


def _broker_certificate(directory: Path, ca_key: Path, ca_cert: Path) -> tuple[Path, Path]:
    key, csr, cert, ext = (directory / n for n in ("broker.key", "broker.csr", "broker.pem", "broker.ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
                    "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
                    "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext)],
                   check=True, capture_output=True)
    return key, cert


def test_the_broker_serves_sasl_ssl_and_clients_verify_it(settings: Settings, tmp_path: Path) -> None:
    ca_key, ca_cert = _ca(tmp_path, "erpsync-test-ca")
    _, other_ca = _ca(tmp_path, "another-ca")
    key, cert = _broker_certificate(tmp_path, ca_key, ca_cert)
    home = tmp_path / "stack"
    home.mkdir()
    (home / "jvm").symlink_to(settings.stack.home / "jvm")
    tls = settings.model_copy(update={
        "kafka": settings.kafka.model_copy(update={
            "port": _free_port(), "controller_port": _free_port(), "ssl_ca_location": ca_cert,
            "ssl_certificate_location": cert, "ssl_key_location": key}),
        "stack": settings.stack.model_copy(update={"home": home, "kafka_heap": "256m"}),
    })
    assert tls.kafka.security_protocol == "SASL_SSL"
    broker = Kafka(tls)
    try:
        broker.start()  # healthy means: metadata over SASL_SSL, verified against the CA
        assert "CLIENT:SASL_SSL" in (home / "kafka" / "server.properties").read_text()
        topic = f"tls-{uuid.uuid4().hex[:8]}"
        producer = Producer(tls.kafka.client_config())
        producer.produce(topic, key=b"k", value=b"over TLS")
        assert producer.flush(30) == 0
        consumer = Consumer(tls.kafka.client_config() | {"group.id": topic, "auto.offset.reset": "earliest"})
        consumer.subscribe([topic])
        try:
            msg = None
            for _ in range(60):
                msg = consumer.poll(0.5)
                if msg is not None and not msg.error():
                    break
            assert msg is not None and msg.value() == b"over TLS"
        finally:
            consumer.close()
        refused = [
            tls.kafka.client_config() | {"security.protocol": "SASL_PLAINTEXT"},  # no TLS on a TLS port
            tls.kafka.client_config() | {"ssl.ca.location": str(other_ca)},  # a broker it cannot verify
        ]
        for config in refused:
            with pytest.raises(KafkaException):
                AdminClient(config | {"socket.timeout.ms": 2000}).list_topics(timeout=4)
    finally:
        broker.stop()
