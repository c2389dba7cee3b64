"""Crypto-shredding of the customer (shared/sealing.py): readable with its contract's key, never without."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings, strategies as st

from shared.events import CancellationForm, Customer, decode, new_envelope
from shared.sealing import DataKey, Unreadable, new_key, seal, unseal

CUSTOMER = Customer(name="山田 太郎", email="taro.yamada@example.jp", phone="090-1234-5678")


def key(contract_id: str = "C-1") -> DataKey:
    return DataKey(contract_id, str(uuid.uuid4()), new_key())


@settings(max_examples=50, deadline=None)
@given(name=st.text(min_size=1, max_size=50).filter(lambda s: s.strip() and "\x00" not in s),
       local=st.from_regex(r"[a-z][a-z0-9]{0,20}", fullmatch=True))
def test_what_is_sealed_opens_with_its_key_and_shows_nothing_in_clear(name, local):
    customer = Customer(name=name, email=f"{local}@example.jp", phone="+81 90 1234 5678")
    k = key()
    sealed = seal(customer, k)
    assert unseal(sealed, "C-1", k) == customer
    raw = sealed.model_dump_json()
    assert local + "@example.jp" not in raw and "1234 5678" not in raw
    assert name.strip() not in raw or len(name.strip()) < 3  # a one-letter name may occur in base64 by chance


def test_without_its_key_it_is_unreadable():
    k = key()
    sealed = seal(CUSTOMER, k)
    with pytest.raises(Unreadable, match="erased"):
        unseal(sealed, "C-1", None)  # the key was erased
    with pytest.raises(Unreadable):
        unseal(sealed, "C-1", key())  # a key made after the erasure, for new data
    with pytest.raises(Unreadable):
        unseal(sealed, "C-1", dataclasses.replace(k, key=new_key()))  # the same id, other bytes
    with pytest.raises(Unreadable):
        unseal(sealed, "C-2", dataclasses.replace(k, contract_id="C-2"))  # moved to another contract
    flipped = sealed.ciphertext[:-4] + ("AAAA" if sealed.ciphertext[-4:] != "AAAA" else "BBBB")
    with pytest.raises(Unreadable):
        unseal(sealed.model_copy(update={"ciphertext": flipped}), "C-1", k)


def test_the_request_event_carries_the_customer_sealed_only():
    from services.intake.store import new_request

    form = CancellationForm(contract_id="C-1", account_id="@c-1", customer=CUSTOMER, plan="pro",
                            reason="NO_LONGER_USED")
    new = new_request(form, source="http", submission_id="k-1", received_at=datetime(2026, 5, 1, tzinfo=timezone.utc))
    k = key()
    event = new.requested(k)
    raw = new_envelope(event, producer="intake", correlation_id=new.request_id, causation_id=None).to_bytes()
    for clear in ("taro.yamada", "090-1234-5678", "山田".encode().decode()):
        assert clear.encode() not in raw
    _, decoded = decode(raw)
    assert decoded.customer is None and unseal(decoded.customer_sealed, "C-1", k) == CUSTOMER
    assert "customer" not in new.row()[5]  # the request row keeps no customer either
    assert new.digest == new_request(form, source="http", submission_id="k-1",
                                     received_at=new.received_at).digest  # the digest still covers it


def _requested_envelope(version: int, **data) -> bytes:
    import orjson

    return orjson.dumps({"event_id": str(uuid.uuid4()), "event_type": "cancellation.requested",
                         "schema_version": version, "occurred_at": "2026-05-01T00:00:00Z", "producer": "intake",
                         "correlation_id": "r-1", "data": {
                             "contract_id": "C-1", "account_id": "@c-1", "plan": "pro", "reason": "NO_LONGER_USED",
                             "request_id": "r-1", "source": "http", "received_at": "2026-05-01T00:00:00Z",
                             "received_on": "2026-05-01", **data}})


def test_cancellation_requested_evolved_by_adding_a_field():
    """Version 2 added `customer_sealed` and kept `customer` (now optional): a version-1 event, the customer
    in clear, still validates; an event with neither is refused, naming the field."""
    from shared.events import CancellationRequested, PoisonMessage

    assert CancellationRequested.schema_version == 2
    assert {"customer", "customer_sealed"} <= set(CancellationRequested.model_fields)
    envelope, v1 = decode(_requested_envelope(1, customer=CUSTOMER.model_dump(mode="json")))
    assert envelope.schema_version == 1 and v1.customer == CUSTOMER and v1.customer_sealed is None
    sealed = seal(CUSTOMER, k := key())
    _, v2 = decode(_requested_envelope(2, customer_sealed=sealed.model_dump(mode="json")))
    assert v2.customer is None and unseal(v2.customer_sealed, "C-1", k) == CUSTOMER
    with pytest.raises(PoisonMessage, match=r"^data\.customer_sealed: .*required when customer is absent"):
        decode(_requested_envelope(2))
    with pytest.raises(PoisonMessage, match=r"^data\.customer\.email: "):  # one error, the bad field's
        decode(_requested_envelope(1, customer={"name": "n", "email": "nope", "phone": "090-1234-5678"}))
