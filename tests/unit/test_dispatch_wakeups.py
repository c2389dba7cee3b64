"""Which dispatch worker claims next (services/notifier/dispatch.py `_Wakeups`): a NOTIFY wakes one idle
worker, a NOTIFY while every worker is busy is not lost, and a full batch wakes only a worker that is idle."""

import asyncio

from services.notifier.dispatch import _Wakeups


async def _idle(wakeups: _Wakeups, timeout_s: float = 5.0) -> asyncio.Task:
    task = asyncio.create_task(wakeups.wait(timeout_s))
    await asyncio.sleep(0)  # the worker is now waiting
    return task


async def test_a_notify_wakes_one_idle_worker_not_both():
    wakeups = _Wakeups()
    first, second = await _idle(wakeups), await _idle(wakeups)
    wakeups.notify()
    await asyncio.sleep(0.01)
    assert [first.done(), second.done()] == [True, False]
    wakeups.notify()
    await asyncio.wait_for(second, 1)


async def test_a_notify_while_every_worker_is_busy_makes_the_next_wait_return_at_once():
    wakeups = _Wakeups()
    wakeups.notify()  # both workers are sending a batch
    await asyncio.wait_for(wakeups.wait(60), 1)  # the first to finish claims again without waiting
    waiting = await _idle(wakeups, 60)  # the one after it waits: the notify was taken
    await asyncio.sleep(0.01)
    assert not waiting.done()
    waiting.cancel()


async def test_a_full_batch_wakes_an_idle_worker_and_is_not_kept_for_later():
    wakeups = _Wakeups()
    assert wakeups.wake_idle() is False  # nobody idle: nothing kept
    waiting = await _idle(wakeups, 60)
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert wakeups.wake_idle() is True
    await asyncio.wait_for(waiting, 1)


async def test_an_idle_worker_polls_when_nothing_wakes_it():
    wakeups = _Wakeups()
    await asyncio.wait_for(wakeups.wait(0.05), 1)  # returns by itself: what falls due later, expired leases
