"""Fixtures of the integration tests beyond the harness (tests/conftest.py): the browser of the cancel
page's tests and a customer's window in it."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from tests.integration.cancel_page_steps import ARGS, CHROMIUM, WAIT, Visit


@pytest.fixture(scope="session")
async def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: ./scripts/install installs Debian's chromium")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


@pytest.fixture
async def visit(browser, infra, request):
    width, js = request.param if isinstance(request.param, tuple) else (request.param, True)
    context = await browser.new_context(viewport={"width": width, "height": 900}, locale="ja-JP",
                                        java_script_enabled=js, base_url=infra.intake_url)
    page = await context.new_page()
    page.set_default_timeout(WAIT)
    yield Visit(page, width, infra.intake_url)
    await context.close()
