"""The AsyncAPI document: generated from the services themselves, checked in, and kept up to date."""

from __future__ import annotations

import threading
from urllib.parse import unquote
from urllib.request import urlopen

import yaml
from faststream.specification.asyncapi.v3_0_0.schema import ApplicationSchema

from cancelflow import asyncapi
from shared import events, topics


def test_the_checked_in_document_is_up_to_date():
    generated = asyncapi.render_yaml()
    assert asyncapi.DEFAULT_OUT.read_text(encoding="utf-8") == generated, (
        "docs/asyncapi.yaml is stale: run `cancelflow asyncapi` and commit the result")


def _resolve(doc: dict, ref: str) -> object:
    node: object = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[unquote(part)]  # type: ignore[index]
    return node


def test_the_document_is_valid_asyncapi_3_and_every_reference_resolves():
    doc = yaml.safe_load(asyncapi.DEFAULT_OUT.read_text(encoding="utf-8"))
    ApplicationSchema.model_validate(doc)  # FastStream's own model of AsyncAPI 3.0
    assert doc["asyncapi"] == "3.0.0"

    def refs(node: object):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    found = list(refs(doc))
    assert len(found) > 100
    for ref in found:
        _resolve(doc, ref)  # raises KeyError if dangling


def test_every_topic_every_consumer_and_every_event_type_is_documented():
    doc = yaml.safe_load(asyncapi.DEFAULT_OUT.read_text(encoding="utf-8"))
    channels = doc["channels"]
    by_address: dict[str, list[str]] = {}
    for key, channel in channels.items():
        by_address.setdefault(channel["address"], []).append(key)
    assert set(by_address) == set(topics.all_with_dlq())
    ops = doc["operations"]
    receivers = {(o["channel"]["$ref"].rsplit("/", 1)[1]) for o in ops.values() if o["action"] == "receive"}
    senders = {(o["channel"]["$ref"].rsplit("/", 1)[1]) for o in ops.values() if o["action"] == "send"}
    received = {channels[unquote(k)]["address"] for k in receivers}
    assert received == set(topics.ALL)  # every SPEC topic has a consumer
    assert {channels[unquote(k)]["address"] for k in senders} == set(topics.all_with_dlq())
    # each service's subscribers, by consumer group
    for service, subscribed in {"intake": 5, "eligibility": 2, "billing": 2, "notifier": 4}.items():
        assert sum(k.startswith(service + ":") and channels[k]["address"] in topics.ALL and "Subscribe" in str(
            channels[k]["messages"]) for k in channels) == subscribed, service
    schemas = doc["components"]["schemas"]
    for event_type, model in events.EVENT_TYPES.items():
        envelope = schemas[f"{model.__name__}Event"]
        assert envelope["properties"]["event_type"]["const"] == event_type
        assert envelope["properties"]["data"]["$ref"] == f"#/components/schemas/{model.__name__}"
    # a subscriber's message is the topic's envelope, not FastStream's empty payload for a raw batch handler
    notifier_decisions = doc["components"]["messages"][
        "notifier:cancellation.requests+cancellation.decisions+billing.settlements:cancellation.decisions:SubscribeMessage"]
    decisions_payload = _resolve(doc, notifier_decisions["payload"]["$ref"])
    assert {o["$ref"].rsplit("/", 1)[1] for o in decisions_payload["oneOf"]} == {
        "CancellationAcceptedEvent", "CancellationRejectedEvent", "CancellationWithdrawnEvent",
        "WithdrawalRefusedEvent", "CancellationCompletedEvent"}
    assert "EmptyPayload" not in schemas
    # cancellation.requested v2 added customer_sealed and kept customer, optional (a v1 event still validates)
    requested = schemas["CancellationRequested"]
    assert {"customer", "customer_sealed"} <= set(requested["properties"])
    assert not {"customer", "customer_sealed"} & set(requested["required"])
    assert requested["properties"]["customer_sealed"]["anyOf"][0]["$ref"] == "#/components/schemas/SealedCustomer"
    assert "version 2" in requested["description"].lower() and "docs/security.md" in requested["description"]


def test_the_document_does_not_depend_on_the_environment(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    monkeypatch.setenv("NOTIFIER_CONSUMER_GROUP", "notifier-blue")
    assert asyncapi.render_yaml() == asyncapi.DEFAULT_OUT.read_text(encoding="utf-8")


def test_serve_gives_the_page_and_the_raw_document():
    httpd = asyncapi.make_server("127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        page = urlopen(base + "/").read().decode()
        assert "AsyncApiStandalone" in page and "cancelflow" in page
        assert yaml.safe_load(urlopen(base + "/asyncapi.yaml").read()) == yaml.safe_load(
            asyncapi.DEFAULT_OUT.read_text(encoding="utf-8"))
    finally:
        httpd.shutdown()
        httpd.server_close()
