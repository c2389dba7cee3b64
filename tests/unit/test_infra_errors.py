"""The stack's errors are one clear line saying what to install or free."""

import socket

import pytest

from cancelflow.infra import kafka
from cancelflow.infra.errors import InfraError, PortTaken, bind_failed, cause_line
from cancelflow.infra.ports import free_port, free_port_block, free_ports, require_free, with_fresh_ports


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


JAVA_TRACE = """Exception in thread "main" java.lang.IllegalArgumentException: requirement failed: Each listener must have a different port, listeners: PLAINTEXT://127.0.0.1:4000,CONTROLLER://127.0.0.1:4000
\tat scala.Predef$.require(Predef.scala:337)
\tat kafka.utils.CoreUtils$.$anonfun$listenerListToEndPoints$8(CoreUtils.scala:169)
\tat kafka.tools.StorageTool.main(StorageTool.scala)
"""


def test_the_cause_line_is_the_exceptions_own_message_not_the_stack():
    assert cause_line(JAVA_TRACE) == ("IllegalArgumentException: requirement failed: Each listener must have a "
                                      "different port, listeners: PLAINTEXT://127.0.0.1:4000,CONTROLLER://127.0.0.1:4000")
    assert cause_line("starting\nCaused by: java.net.BindException: Address already in use\n\tat x") == (
        "BindException: Address already in use")
    assert cause_line("line one\nthe last words\n") == "the last words"
    assert bind_failed("java.net.BindException: Address already in use") and not bind_failed(JAVA_TRACE)


def test_kafkas_own_complaint_about_its_listeners_is_the_error(tmp_path):
    """The real storage tool on a configuration with one port for both listeners: its message, one line."""
    node = kafka.KafkaNode(tmp_path, 23999, 23999)
    with pytest.raises(InfraError) as err:
        node.format_storage()
    message = str(err.value)
    assert message.startswith("Kafka storage format failed: IllegalArgumentException: requirement failed: ")
    assert "listeners: PLAINTEXT://127.0.0.1:23999,CONTROLLER://127.0.0.1:23999" in message
    assert "\n" not in message and "Scala" not in message and ".scala:" not in message


def test_ports_are_never_handed_out_twice_and_stay_out_of_the_ephemeral_range():
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    first, second = free_ports(40), free_ports(40)
    everything = first + second + [free_port() for _ in range(20)]
    assert len(set(everything)) == len(everything) == 100
    assert all(10_000 <= p < low for p in everything)
    base = free_port_block(8)
    assert not set(range(base, base + 8)) & set(everything)


def test_a_start_whose_port_was_taken_is_tried_again_on_new_ports():
    attempts = []

    def start():
        attempts.append(free_ports(2))
        if len(attempts) < 3:
            raise PortTaken(f"port {attempts[-1][0]} taken")
        return attempts[-1]

    assert with_fresh_ports(start) == attempts[2] and len({p for a in attempts for p in a}) == 6
    with pytest.raises(PortTaken):
        with_fresh_ports(lambda: (_ for _ in ()).throw(PortTaken("always")), attempts=2)


@pytest.mark.parametrize("made_with, marker", [("tls", "tls"), ("plaintext", None)])
def test_a_stack_made_with_one_security_is_not_started_with_another(tmp_path, made_with, marker):
    from cancelflow.stack import Stack, StackConfig

    (tmp_path / "kafka" / "log").mkdir(parents=True)
    (tmp_path / "kafka" / "log" / "meta.properties").write_text("cluster.id=x\n")
    if marker:
        (tmp_path / "kafka" / "security").write_text(marker)
    with pytest.raises(InfraError) as err:
        Stack(StackConfig(root=tmp_path, security="scram"))._check_kafka_security()
    assert f"was made with --security {made_with}" in str(err.value)
    Stack(StackConfig(root=tmp_path, security=made_with))._check_kafka_security()  # the same one starts
