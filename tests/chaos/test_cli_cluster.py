"""`cancelflow status --json` and `cancelflow scale` as a script uses them, against the running cluster stack
(`cancelflow up --brokers 3 --instances 2` is the same `Stack.up` the fixture runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest

from shared import topics

pytestmark = pytest.mark.integration


def cli(stack, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CANCELFLOW_"))}
    env["CANCELFLOW_STACK_DIR"] = str(stack.root)
    return subprocess.run([sys.executable, "-m", "cancelflow.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_status_json_lists_every_process_and_scale_changes_the_count(cluster_stack):
    stack = cluster_stack
    result = cli(stack, "status", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    brokers = [r for r in rows if r["kind"] == "broker"]
    services = [r for r in rows if r["kind"] == "service"]
    assert [b["name"] for b in brokers] == ["kafka-1", "kafka-2", "kafka-3"]
    assert sum("active controller" in b["role"] for b in brokers) == 1
    led = sum(int(b["role"].split("leader of ")[1].split()[0]) for b in brokers)
    assert led == len(topics.all_with_dlq()) * stack.config.partitions, "every partition has a leader"
    assert sorted((s["service"], s["instance"]) for s in services) == sorted(
        (name, k) for name in ("intake", "eligibility", "billing", "notifier") for k in (1, 2))
    assert all(r["running"] and r["healthy"] for r in rows), rows
    assert len({r["port"] for r in rows}) == len(rows) and all(psutil.pid_exists(r["pid"]) for r in rows)
    assert {r["kind"] for r in rows} == {"broker", "database", "smtp", "service"}

    up = cli(stack, "scale", "billing", "3")
    assert up.returncode == 0 and "started billing-3" in up.stdout, up.stdout + up.stderr
    third = next(r for r in json.loads(cli(stack, "status", "--json").stdout) if r["name"] == "billing-3")
    assert third["healthy"] and third["role"] == "consumer group billing"
    down = cli(stack, "scale", "billing", "2")
    assert down.returncode == 0 and "stopped billing-3" in down.stdout, down.stdout + down.stderr
    assert not psutil.pid_exists(third["pid"]) or psutil.Process(third["pid"]).status() == psutil.STATUS_ZOMBIE
    assert "billing-3" not in {r["name"] for r in json.loads(cli(stack, "status", "--json").stdout)}

    refused = cli(stack, "scale", "billing", "0")
    assert refused.returncode == 1 and "between 1 and" in refused.stdout
    unknown = cli(stack, "scale", "payments", "2")
    assert unknown.returncode == 1 and "SERVICE: 'payments'" in unknown.stdout


def test_down_stops_every_process_of_the_cluster(cluster_stack):
    """Last in the package (conftest orders it): `cancelflow down` on the running cluster stops its three
    nodes, the database, the sink and every instance, and says so."""
    rows = json.loads(cli(cluster_stack, "status", "--json").stdout)
    result = cli(cluster_stack, "down")
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())  # the console wraps long lines
    assert set(said.split("stopped: ")[1].split(", ")) == {r["name"] for r in rows}
    left = [r["name"] for r in rows if psutil.pid_exists(r["pid"])
            and psutil.Process(r["pid"]).status() != psutil.STATUS_ZOMBIE]
    assert left == []
    assert cli(cluster_stack, "status", "--json").stdout.strip() == "[]"
