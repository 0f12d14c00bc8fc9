"""The circuit breaker's states, on an injected clock (no Redis, no waiting)."""

from __future__ import annotations

from securecache.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, reset: float = 2.0) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(failures, reset, clock), clock


def test_closed_until_the_threshold_of_failures_in_a_row() -> None:
    """Failures below the threshold leave it closed; a success starts the count again."""
    cb, _ = breaker(failures=3)
    cb.failure()
    cb.failure()
    cb.success()
    cb.failure()
    cb.failure()
    assert cb.allow()
    assert not cb.is_open


def test_open_refuses_every_call_for_the_reset_time() -> None:
    """The third failure in a row opens it: nothing goes to Redis until the pause is over."""
    cb, clock = breaker(failures=3, reset=2.0)
    for _ in range(3):
        cb.failure()
    assert cb.is_open
    assert not cb.allow()
    clock.now += 1.99
    assert not cb.allow()


def test_half_open_lets_exactly_one_probe_through() -> None:
    """After the pause one call probes; the others fall through while it is out."""
    cb, clock = breaker(failures=1, reset=2.0)
    cb.failure()
    clock.now += 2.0
    assert cb.allow()
    assert not cb.allow()
    assert not cb.allow()


def test_a_successful_probe_closes_it() -> None:
    """The probe's success closes the breaker: every call goes again."""
    cb, clock = breaker(failures=1, reset=2.0)
    cb.failure()
    clock.now += 2.0
    assert cb.allow()
    cb.success()
    assert not cb.is_open
    assert cb.allow()
    assert cb.allow()


def test_a_failed_probe_opens_it_for_another_pause() -> None:
    """The probe's failure opens it again, counted from the probe's failure."""
    cb, clock = breaker(failures=1, reset=2.0)
    cb.failure()
    clock.now += 2.0
    assert cb.allow()
    clock.now += 0.5
    cb.failure()
    clock.now += 1.9
    assert not cb.allow()
    clock.now += 0.2
    assert cb.allow()


def test_an_abandoned_probe_lets_another_through() -> None:
    """A probe cancelled before any answer says nothing of Redis: the next call may probe."""
    cb, clock = breaker(failures=1, reset=2.0)
    cb.failure()
    clock.now += 2.0
    assert cb.allow()
    cb.abandon()
    assert cb.allow()
