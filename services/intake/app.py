"""intake: `faststream run services.intake.app:create_app --factory --port 8001`."""

from __future__ import annotations

from pathlib import Path

from shared.service import ServiceApp, build_app
from shared.settings import load_settings

from .api import install
from .handlers import subscriptions
from .settings import IntakeSettings


def create_app(settings: IntakeSettings | None = None) -> ServiceApp:
    return build_app(name="intake", settings=settings or load_settings(IntakeSettings), service_dir=Path(__file__).parent,
                     subscriptions=subscriptions, http=install)
