"""notifier: `faststream run services.notifier.app:create_app --factory --port 8004`."""

from __future__ import annotations

from pathlib import Path

from shared.service import ServiceApp, build_app
from shared.settings import load_settings

from .dispatch import dispatch_loop
from .handlers import subscriptions
from .settings import NotifierSettings


def create_app(settings: NotifierSettings | None = None) -> ServiceApp:
    settings = settings or load_settings(NotifierSettings)
    return build_app(name="notifier", settings=settings, service_dir=Path(__file__).parent,
                     subscriptions=subscriptions, background=[dispatch_loop(settings)])
