"""Client-side request rate limiting: a sliding-window limiter shared by every request of a process.

The limiter guarantees that no window of ``window_seconds`` contains more than ``max_requests``
acquisitions (a sliding log, not a token bucket, so there is no burst above the budget at a window
edge). A server-side ``429`` can pause every caller until the server's reset time with
:meth:`RateLimiter.pause_until`. Clock and sleep are injectable so tests run on a fake clock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from workbench.errors import ConfigError

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class RateLimiter:
    """At most ``max_requests`` acquisitions in any window of ``window_seconds`` (thread-safe).

    Parameters
    ----------
    max_requests : int
        Budget per window (Alpaca: 200 per 60 s per account).
    window_seconds : float
        Length of the sliding window.
    margin_seconds : float
        Extra spacing added to the window. The server counts arrival times, which trail our send
        times by a varying latency; a small margin keeps its count inside the budget too.
    clock, sleep : callable, optional
        Monotonic clock and sleep function (default :func:`time.monotonic`, :func:`time.sleep`).
    """

    def __init__(
        self,
        max_requests: int,
        window_seconds: float = 60.0,
        *,
        margin_seconds: float = 0.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if not isinstance(max_requests, int) or max_requests < 1:
            raise ConfigError(
                f"The 'max_requests' parameter of RateLimiter must be an int >= 1. Got {max_requests!r} instead."
            )
        if not window_seconds > 0:
            raise ConfigError(
                f"The 'window_seconds' parameter of RateLimiter must be > 0. Got {window_seconds!r} instead."
            )
        if not margin_seconds >= 0:
            raise ConfigError(
                f"The 'margin_seconds' parameter of RateLimiter must be >= 0. Got {margin_seconds!r} instead."
            )
        self.max_requests = max_requests
        self.window_seconds = float(window_seconds)
        self._span = float(window_seconds) + float(margin_seconds)
        self._clock = clock
        self._sleep = sleep
        self._log: deque[float] = deque()
        self._paused_until = float("-inf")
        self._lock = threading.Lock()
        self.waited = 0.0  # total seconds callers spent waiting (for reports)
        self.acquired = 0  # total acquisitions

    @property
    def per_minute(self) -> float:
        """Return the budget expressed in requests per minute."""
        return self.max_requests * 60.0 / self.window_seconds

    def __repr__(self) -> str:
        return f"RateLimiter({self.max_requests} per {self.window_seconds:g}s)"

    def _delay(self, now: float) -> float:
        while self._log and self._log[0] <= now - self._span:
            self._log.popleft()
        delay = self._paused_until - now
        if len(self._log) >= self.max_requests:
            # full: the oldest is still inside the window, so a positive wait is due even when
            # rounding makes the difference look like zero
            delay = max(delay, self._log[0] + self._span - now, 1e-6)
        return delay

    def acquire(self) -> float:
        """Block until a request may be sent, record it and return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                delay = self._delay(now)
                if delay <= 0:
                    self._log.append(now)
                    self.acquired += 1
                    self.waited += waited
                    return waited
            self._sleep(delay)
            waited += delay

    def pause_until(self, when: float) -> None:
        """Hold every caller until monotonic time ``when`` (after a 429 with a reset time)."""
        with self._lock:
            self._paused_until = max(self._paused_until, when)

    def pause_for(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` from now."""
        self.pause_until(self._clock() + max(0.0, seconds))


_PROCESS: dict[tuple[str, int, float], RateLimiter] = {}
_PROCESS_LOCK = threading.Lock()


def process_limiter(name: str, max_requests: int, window_seconds: float = 60.0) -> RateLimiter:
    """Return the process-wide limiter for ``name`` and budget, creating it on first use.

    Every client of one account shares it, so a source, the asset cache and anything else that
    talks to the same API stay inside one budget together. The window gets a 1 % margin against
    network jitter (200 per 60 s is spaced as 200 per 60.6 s).
    """
    key = (name, int(max_requests), float(window_seconds))
    with _PROCESS_LOCK:
        if key not in _PROCESS:
            _PROCESS[key] = RateLimiter(
                max_requests, window_seconds, margin_seconds=0.01 * window_seconds
            )
        return _PROCESS[key]
