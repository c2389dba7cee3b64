"""The cluster's and the instances' layout (`cancelflow up --brokers 3 --instances N`) and the rule that every
producer of the project waits for all in-sync replicas, idempotently."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cancelflow.infra.errors import InfraError
from cancelflow.stack import Ports, Stack, StackConfig
from cancelflow.stack_cluster import Process, check_brokers, check_cluster_data, check_instances
from shared.kafka_connection import KafkaConnection
from shared.vocabulary import SERVICES

REPO = Path(__file__).resolve().parents[2]


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_three_nodes_replicate_everything_three_times_and_acknowledge_on_two(tmp_path):
    stack = Stack(StackConfig(root=tmp_path, ports=Ports.from_base(30000), brokers=3))
    nodes = stack.kafka_nodes
    assert list(nodes) == ["kafka-1", "kafka-2", "kafka-3"]
    assert stack.bootstrap == "127.0.0.1:30008,127.0.0.1:30009,127.0.0.1:30010", "every node, consecutive ports"
    ids = set()
    for k, node in enumerate(nodes.values(), start=1):
        p = props(node.server_properties())
        ids.add(node.cluster_id)
        assert p["node.id"] == str(k) and p["process.roles"] == "broker,controller"
        assert p["controller.quorum.voters"] == "1@127.0.0.1:30011,2@127.0.0.1:30012,3@127.0.0.1:30013"
        assert p["listeners"] == f"PLAINTEXT://127.0.0.1:{30007 + k},CONTROLLER://127.0.0.1:{30010 + k}"
        for key in ("default.replication.factor", "offsets.topic.replication.factor",
                    "transaction.state.log.replication.factor", "share.coordinator.state.topic.replication.factor"):
            assert p[key] == "3", key
        for key in ("min.insync.replicas", "transaction.state.log.min.isr", "share.coordinator.state.topic.min.isr"):
            assert p[key] == "2", key
        assert p["unclean.leader.election.enable"] == "false"
        assert int(p["initial.broker.registration.timeout.ms"]) >= 300_000, "a slow peer is waited for"
        assert node.data_dir == tmp_path / f"kafka-{k}"
    assert len(ids) == 1 and None not in ids, "one cluster id for every node"


def test_one_node_stays_the_default_with_its_own_quorum(tmp_path):
    stack = Stack(StackConfig(root=tmp_path, ports=Ports.from_base(30000)))
    assert list(stack.kafka_nodes) == ["kafka"] and stack.bootstrap == "127.0.0.1:30000"
    p = props(stack.kafka_node.server_properties())
    assert p["controller.quorum.bootstrap.servers"] == "127.0.0.1:30001" and "controller.quorum.voters" not in p
    assert p["offsets.topic.replication.factor"] == "1" and p["min.insync.replicas"] == "1"


def test_every_process_of_a_large_stack_has_its_own_port():
    ports = Ports.from_base(30000)
    stack_ports = [ports.kafka, ports.kafka_controller, ports.postgres, ports.smtp]
    stack_ports += [p for k in (1, 2, 3) for p in ports.broker(k, 3)]
    stack_ports += [ports.service(s, k) for s in SERVICES for k in range(1, 5)]
    assert len(set(stack_ports)) == len(stack_ports)
    assert ports.service("intake", 1) == 30004 and ports.service("intake", 2) == 30024
    assert ports.service("notifier", 3) == 30031


def test_process_names_say_kind_service_and_instance():
    assert (Process("kafka-2").kind, Process("kafka").kind) == ("broker", "broker")
    assert (Process("postgres").kind, Process("smtp").kind) == ("database", "smtp")
    p = Process("eligibility-3")
    assert (p.kind, p.service, p.instance) == ("service", "eligibility", 3)
    assert (Process("intake").service, Process("intake").instance) == ("intake", 1)


def test_unworkable_counts_are_refused_with_the_option_named(tmp_path):
    with pytest.raises(InfraError, match="--brokers 2"):
        check_brokers(2)
    check_brokers(1)
    check_brokers(3)
    with pytest.raises(InfraError, match="--instances 0"):
        check_instances(0)
    check_cluster_data(tmp_path, 3)
    with pytest.raises(InfraError, match="made with --brokers 3"):
        check_cluster_data(tmp_path, 5)


def test_bootstrap_servers_are_a_list_for_faststream():
    conn = KafkaConnection(bootstrap_servers="127.0.0.1:1, 127.0.0.1:2,127.0.0.1:3")
    assert conn.servers == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def _keyword(call: ast.Call, name: str):
    return next((ast.literal_eval(k.value) for k in call.keywords if k.arg == name), None)


def test_every_producer_of_the_project_is_acks_all_and_idempotent():
    """Relays (the services' outbox producer), FastStream's broker, the operator commands (`dlq replay`,
    the client, the demo, the benchmark: all through `kafka_clients.producer`)."""
    checked = []
    for path in [*REPO.glob("cancelflow/**/*.py"), *REPO.glob("shared/**/*.py"), *REPO.glob("services/**/*.py"),
                 *REPO.glob("bench/**/*.py")]:
        tree = ast.parse(path.read_text())
        for call in _calls(tree, "AIOKafkaProducer") + _calls(tree, "KafkaBroker"):
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            if path.name == "asyncapi.py":
                continue  # the AsyncAPI document's broker describes subscribers; it never connects
            if path.name == "kafka_clients.py":  # the factory: its defaults, set with setdefault
                source = path.read_text()
                assert 'options.setdefault("enable_idempotence", True)' in source
                assert 'options.setdefault("acks", "all")' in source
            else:
                assert _keyword(call, "acks") == "all" and _keyword(call, "enable_idempotence") is True, where
            checked.append(where)
        for call in _calls(tree, "producer"):
            if isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", None) == "kafka_clients":
                assert _keyword(call, "acks") in (None, "all") and _keyword(call, "enable_idempotence") in (None, True)
    assert any(w.startswith("shared/service.py") for w in checked), "the outbox relay's producer was checked"


@pytest.mark.parametrize("security, protocol", [("scram", "SASL_PLAINTEXT"), ("tls", "SSL")])
def test_a_secured_cluster_has_the_same_listener_on_every_node(tmp_path, security, protocol):
    """`--brokers 3 --security scram|tls`: the nodes talk to each other over the secured listener, with the
    stack's one SCRAM user or one certificate (for 127.0.0.1) on every node."""
    stack = Stack(StackConfig(root=tmp_path, ports=Ports.from_base(30000), brokers=3, security=security))
    seen = set()
    for node in stack.kafka_nodes.values():
        p = props(node.server_properties())
        assert p["listeners"].startswith(f"{protocol}://127.0.0.1:{node.port},")
        assert p["inter.broker.listener.name"] == protocol
        seen.add(p.get("listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config", p.get("ssl.keystore.location")))
    assert len(seen) == 1 and None not in seen
    assert stack.kafka_connection.security_protocol == protocol
    assert stack.kafka_connection.bootstrap_servers.count(",") == 2
