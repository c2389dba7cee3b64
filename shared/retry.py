"""Waiting for a dependency with exponential backoff (tenacity), the same way everywhere."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

log = logging.getLogger(__name__)

T = TypeVar("T")


def _log_wait(what: str, level: int) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.log(level, "waiting for %s: %s: %s", what, type(exc).__name__, exc)
    return before_sleep


def backing_off(what: str, *, first_s: float = 0.2, most_s: float = 5.0,
                level: int = logging.WARNING) -> AsyncRetrying:
    """Retry on any Exception (never on cancellation) forever, waiting first_s, 2*first_s, ... up to most_s,
    logging each failure at `level`."""
    return AsyncRetrying(wait=wait_exponential(multiplier=first_s, max=most_s),
                         retry=retry_if_exception_type(Exception), before_sleep=_log_wait(what, level),
                         reraise=True)


async def until_it_works(what: str, attempt: Callable[[], Awaitable[T]], **options) -> T:
    """`attempt()` until it returns, backing off between failures (see `backing_off`)."""
    return await backing_off(what, **options)(attempt)
