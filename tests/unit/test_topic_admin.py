"""Describing topics just created on a cluster: a broker that does not know them yet is asked again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cancelflow.infra import topic_admin
from cancelflow.infra.errors import InfraError


class _Admin:
    def __init__(self, codes: list[int]) -> None:
        self.codes = codes  # one error code per call, the last repeated
        self.calls = 0

    async def describe_configs(self, resources):
        code = self.codes[min(self.calls, len(self.codes) - 1)]
        self.calls += 1
        entries = [] if code else [("retention.ms", "-1", False, 1, False, [])]
        return [SimpleNamespace(API_VERSION=1, resources=[(code, "", 2, r.name, entries) for r in resources])]


async def test_a_topic_unknown_at_first_is_described_once_the_broker_knows_it(monkeypatch):
    monkeypatch.setattr(topic_admin.asyncio, "sleep", _no_wait)
    admin = _Admin([3, 3, 0])
    assert await topic_admin._describe(admin, ["contracts.events"]) == {"contracts.events": {"retention.ms": ("-1", True)}}
    assert admin.calls == 3


async def test_a_topic_that_stays_unknown_or_another_error_is_named(monkeypatch):
    monkeypatch.setattr(topic_admin.asyncio, "sleep", _no_wait)
    with pytest.raises(InfraError, match="contracts.events: error 3"):
        await topic_admin._describe(_Admin([3]), ["contracts.events"], unknown_tries=4)
    with pytest.raises(InfraError, match="error 29"):
        await topic_admin._describe(_Admin([29]), ["contracts.events"])


async def _no_wait(_seconds: float) -> None:
    return None
