"""intake: `faststream run services.intake.app:create_app --factory --port 8001`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from shared.service import Runtime, ServiceApp, Subscription, build_app

from .api import install
from .contracts import contract_subscriptions
from .handlers import subscriptions
from .page import install_page
from .quote import install_quote
from .settings import IntakeSettings


def _http(runtime: Runtime, app: FastAPI) -> None:
    install(runtime, app)
    install_page(runtime, app, install_quote(runtime, app))


def all_subscriptions(runtime: Runtime) -> list[Subscription]:
    """The submissions and the status view (handlers), and the contract projection (contracts)."""
    return [*subscriptions(runtime), *contract_subscriptions(runtime)]


def create_app(settings: IntakeSettings | None = None) -> ServiceApp:
    return build_app(name="intake", settings=settings or IntakeSettings(), service_dir=Path(__file__).parent,
                     subscriptions=all_subscriptions, http=_http)
