"""intake: `faststream run services.intake.app:create_app --factory --port 8001`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from shared.service import Runtime, ServiceApp, build_app
from shared.settings import load_settings

from .api import install
from .handlers import subscriptions
from .page import install_page
from .quote import install_quote
from .settings import IntakeSettings


def _http(runtime: Runtime, app: FastAPI) -> None:
    install(runtime, app)
    install_page(runtime, app, install_quote(runtime, app))


def create_app(settings: IntakeSettings | None = None) -> ServiceApp:
    return build_app(name="intake", settings=settings or load_settings(IntakeSettings),
                     service_dir=Path(__file__).parent, subscriptions=subscriptions, http=_http)
