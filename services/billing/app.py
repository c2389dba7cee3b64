"""billing: `faststream run services.billing.app:create_app --factory --port 8003`."""

from __future__ import annotations

from pathlib import Path

from shared.service import ServiceApp, build_app
from shared.settings import load_settings

from .handlers import subscriptions
from .settings import BillingSettings


def create_app(settings: BillingSettings | None = None) -> ServiceApp:
    return build_app(name="billing", settings=settings or load_settings(BillingSettings), service_dir=Path(__file__).parent,
                     subscriptions=subscriptions)
