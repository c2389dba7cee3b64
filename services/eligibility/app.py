"""eligibility: `faststream run services.eligibility.app:create_app --factory --port 8002`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from shared.service import Runtime, ServiceApp, build_app
from shared.settings import load_settings

from .domain import offer_policy_from_json
from .handlers import complete_due_cancellations, subscriptions
from .settings import EligibilitySettings

log = logging.getLogger(__name__)


def create_app(settings: EligibilitySettings | None = None) -> ServiceApp:
    settings = settings or load_settings(EligibilitySettings)
    policy = offer_policy_from_json(settings.offer_policy_json)

    async def completion_loop(rt: Runtime) -> None:
        """A durable schedule: the due cancellations are in the table, so a restart loses none."""
        while True:
            try:
                await complete_due_cancellations(rt)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next tick retries
                log.warning("completion pass failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(settings.completion_interval_s)

    return build_app(name="eligibility", settings=settings, service_dir=Path(__file__).parent,
                     subscriptions=subscriptions(policy, settings.offer_holdout_percent), background=[completion_loop])
