"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from tests.unit.compose_files import load_compose


@pytest.fixture(scope="module")
def compose() -> dict:
    """docker-compose.yml, read and interpolated (test_compose*.py)."""
    return load_compose()
