"""The circuit breaker in front of Redis: stop calling a Redis that keeps failing.

Every failed call already fails open (PostgreSQL answers instead), but each still waits out
its timeout. After ``failures`` failures in a row the breaker opens: no call goes to Redis
for ``reset_seconds``. Then it is half-open: one call probes; its success closes the
breaker, its failure opens it again, and the others keep falling through to PostgreSQL
meanwhile. The clock is injected, so the states can be tested without waiting. I/O-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Closed, open, half-open; see the module docstring."""

    def __init__(
        self,
        failures: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failures
        self._reset = reset_seconds
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    @property
    def is_open(self) -> bool:
        """True from the failure that opened it until a probe succeeds."""
        return self._failures >= self._threshold

    def allow(self) -> bool:
        """True if a call may go to Redis now: closed, or the one probe when half-open."""
        if self._failures < self._threshold:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._probing = False

    def abandon(self) -> None:
        """A call ended without an answer either way (cancelled): let another probe."""
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self._failures >= self._threshold:
            self._open_until = self._clock() + self._reset
