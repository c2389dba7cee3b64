"""batch_collect_ms: the broker holds a consumer's fetch so that a batch gathers what came meanwhile."""

from __future__ import annotations

import pytest

from services.billing.settings import BillingSettings
from services.eligibility.settings import EligibilitySettings
from services.notifier.settings import NotifierSettings
from shared.service import fetch_options


def test_no_collecting_by_default_a_batch_goes_as_soon_as_a_record_arrives() -> None:
    assert fetch_options(0) == {"batch_timeout_ms": 50}
    assert EligibilitySettings().batch_collect_ms == 0


def test_collecting_holds_the_fetch_up_to_the_window_or_a_mebibyte() -> None:
    assert fetch_options(200) == {"batch_timeout_ms": 200, "fetch_min_bytes": 1 << 20, "fetch_max_wait_ms": 200}
    assert fetch_options(20)["batch_timeout_ms"] == 50  # FastStream's getmany never waits less than 50 ms


@pytest.mark.parametrize("cls, prefix", [(EligibilitySettings, "ELIGIBILITY_"), (BillingSettings, "BILLING_"),
                                         (NotifierSettings, "NOTIFIER_")])
def test_each_service_reads_its_own_window(monkeypatch, cls, prefix) -> None:
    monkeypatch.setenv(f"{prefix}BATCH_COLLECT_MS", "200")
    assert cls().batch_collect_ms == 200


def test_the_window_is_bounded() -> None:
    with pytest.raises(ValueError, match="batch_collect_ms"):
        EligibilitySettings(batch_collect_ms=60_000)
