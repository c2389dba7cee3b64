"""The stack's errors are one clear line saying what to install or free."""

import socket

import pytest

from cancelflow.infra import kafka
from cancelflow.infra.errors import InfraError
from cancelflow.infra.ports import require_free


def test_busy_port_names_the_port_and_what_needs_it():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InfraError) as err:
            require_free(port, "kafka")
    assert str(err.value) == f"port {port} (kafka) is busy: free it or choose another port"


def test_missing_maven_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(kafka, "CACHE", tmp_path)
    monkeypatch.setattr(kafka.shutil, "which", lambda name: None)
    with pytest.raises(InfraError) as err:
        kafka.ensure_jars()
    assert "mvn" in str(err.value) and "install Maven" in str(err.value) and "\n" not in str(err.value)


def test_missing_java_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(kafka.shutil, "which", lambda name: None if name == "java" else "/usr/bin/" + name)
    node = kafka.KafkaNode(tmp_path, 1, 2)
    with pytest.raises(InfraError) as err:
        node.format_storage()
    assert "JDK" in str(err.value)
