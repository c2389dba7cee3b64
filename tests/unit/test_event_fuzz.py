"""The event parsers never crash: any bytes decode to a typed event or a PoisonMessage naming the field."""

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.events import EVENT_TYPES, PoisonMessage, decode

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)


def _outcome(raw: bytes) -> str:
    try:
        decode(raw)
    except PoisonMessage as exc:
        assert str(exc), "a poison reason is never empty"
        return "poison"
    return "ok"


@given(st.binary(max_size=300))
def test_any_bytes_are_an_event_or_poison(raw):
    assert _outcome(raw) in {"ok", "poison"}


@settings(max_examples=300)
@given(event_type=st.sampled_from(sorted(EVENT_TYPES)), version=st.integers(-2, 5), data=json_values,
       extra=st.dictionaries(st.text(max_size=8), json_values, max_size=3))
def test_envelopes_with_arbitrary_data_are_an_event_or_poison(event_type, version, data, extra):
    envelope = extra | {"event_id": "0b7c1c64-4a4f-4e5e-9a4c-1a2b3c4d5e6f", "event_type": event_type,
                        "schema_version": version, "occurred_at": "2026-01-01T00:00:00+09:00",
                        "producer": "fuzz", "correlation_id": "x", "data": data}
    outcome = _outcome(orjson.dumps(envelope))
    if version > 1 or version < 1 or not isinstance(data, dict):
        assert outcome == "poison"


def test_poison_reason_names_the_field():
    raw = orjson.dumps({"event_id": "0b7c1c64-4a4f-4e5e-9a4c-1a2b3c4d5e6f", "event_type": "payment.recorded",
                        "schema_version": 1, "occurred_at": "2026-01-01T00:00:00Z", "producer": "p",
                        "correlation_id": "c", "data": {"contract_id": "C1", "billing_date": "2026-02-30",
                                                        "amount_jpy": -1}})
    try:
        decode(raw)
    except PoisonMessage as exc:
        assert "data.billing_date" in str(exc) and "data.amount_jpy" in str(exc)
    else:
        raise AssertionError("an impossible date and a negative amount must be poison")
