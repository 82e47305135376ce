"""Request budgets the dispatcher honours: a rolling-window token bucket a plugin can correct."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class RateLimiter:
    """At most ``limit`` requests in any ``window`` seconds, plus a pause-until for hard stops.

    The window is rolling (the start times of the last ``limit`` requests are kept), which is how
    rolling APIs count their limits; a bucket that refills continuously would overshoot at the
    window edge. A destination corrects it from what the remote side says:
    :meth:`observe_remaining` after each answer, :meth:`pause_until` after a 429 or a daily stop.
    """

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a rate limit needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self.clock = clock
        self._starts: deque[float] = deque()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        #: why the limiter is paused (shown in status), or ""
        self.pause_reason = ""

    def _delay(self) -> float:
        now = self.clock()
        while self._starts and self._starts[0] <= now - self.window:
            self._starts.popleft()
        wait = max(0.0, self._paused_until - now)
        if len(self._starts) >= self.limit:
            wait = max(wait, self._starts[0] + self.window - now)
        return wait

    async def acquire(self) -> None:
        """Wait until one more request fits the budget, then count it."""
        async with self._lock:
            while (wait := self._delay()) > 0:
                await asyncio.sleep(wait)
            self._starts.append(self.clock())

    def observe_remaining(self, remaining: int, window: float | None = None) -> None:
        """The remote side says only ``remaining`` requests are left in its current window."""
        if window:
            self.window = window
        self._delay()  # forget requests that already left the window
        used = self.limit - max(0, remaining)
        now = self.clock()
        # count requests we do not know about (another client of the same account) as just made
        while len(self._starts) < used:
            self._starts.append(now)

    def saturate(self) -> float:
        """The remote side says its window is full: count ours full too (requests we did not see
        are taken as just made). Returns the seconds until one more request fits."""
        self.observe_remaining(0)
        return self._delay()

    def pause_until(self, until: float, reason: str) -> None:
        """Send nothing before ``until`` (in this limiter's clock)."""
        if until > self._paused_until:
            self._paused_until = until
            self.pause_reason = reason

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self.clock())
