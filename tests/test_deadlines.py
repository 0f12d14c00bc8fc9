"""The shared deadline timer of Redis operations (securecache.deadlines), without servers."""

from __future__ import annotations

import asyncio

import pytest

from securecache.deadlines import Deadlines


async def test_an_operation_past_its_time_raises_timeout_error() -> None:
    """An await inside the bound that outlasts it is cut short with TimeoutError."""
    deadlines = Deadlines(0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError), deadlines:
        await asyncio.sleep(5)
    assert loop.time() - started < 1


async def test_operations_in_time_finish_and_leave_nothing_behind() -> None:
    """Operations that finish in time return normally; none stays registered, and the
    timer set for them cancels nobody later."""
    deadlines = Deadlines(0.05)

    async def operation(n: int) -> int:
        with deadlines:
            await asyncio.sleep(0)
            return n

    assert await asyncio.gather(*(operation(n) for n in range(20))) == list(range(20))
    await asyncio.sleep(0.08)  # past the timer: it finds nothing to cancel
    survivor = asyncio.current_task()
    assert survivor is not None
    assert not survivor.cancelling()
    assert not deadlines._due
    assert not deadlines._expired


async def test_each_operation_gets_its_own_time() -> None:
    """An operation that starts later is not cut at the time of an earlier one: the timer
    wakes again for the next due."""
    deadlines = Deadlines(0.1)
    outcomes: dict[str, str] = {}

    async def operation(name: str, delay: float, length: float) -> None:
        await asyncio.sleep(delay)
        try:
            with deadlines:
                await asyncio.sleep(length)
            outcomes[name] = "finished"
        except TimeoutError:
            outcomes[name] = "timed out"

    await asyncio.gather(
        operation("early, too long", 0, 1),
        operation("later, in time", 0.06, 0.07),  # runs past the early one's due
        operation("later, too long", 0.06, 1),
    )
    assert outcomes == {
        "early, too long": "timed out",
        "later, in time": "finished",
        "later, too long": "timed out",
    }


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    """Cancelling the task of an operation raises CancelledError, not TimeoutError."""
    deadlines = Deadlines(5)

    async def operation() -> None:
        with deadlines:
            await asyncio.sleep(5)

    task = asyncio.create_task(operation())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines._due


async def test_a_cancellation_racing_the_deadline_is_not_lost() -> None:
    """A task cancelled by its caller in the same turn as its deadline passes is cancelled:
    the caller's cancellation wins over the timeout."""
    deadlines = Deadlines(0.02)

    async def operation() -> None:
        with deadlines:
            await asyncio.sleep(5)

    task = asyncio.create_task(operation())
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    assert deadlines._timer is not None
    loop.call_at(deadlines._timer.when(), task.cancel)  # in the deadline's own turn
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_operations_do_not_nest_in_one_task() -> None:
    """One task runs one bounded operation at a time: nesting is a bug, refused."""
    deadlines = Deadlines(1)
    with deadlines, pytest.raises(RuntimeError, match="nested"), deadlines:
        pass  # pragma: no cover
