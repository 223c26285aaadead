"""The sliding-window limiter on a fake clock: never more than N in any window, pauses hold all."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.data.ratelimit import RateLimiter, process_limiter
from workbench.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s

    def advance(self, s: float) -> None:
        self.t += s


def max_in_window(times: list[float], window: float) -> int:
    j, best = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_burst_then_waits_for_the_oldest_to_leave_the_window() -> None:
    clk = FakeClock()
    lim = RateLimiter(3, 10.0, clock=clk, sleep=clk.sleep)
    got = []
    for _ in range(7):
        lim.acquire()
        got.append(clk.t)
    assert got == [1000, 1000, 1000, 1010, 1010, 1010, 1020]
    assert lim.acquired == 7 and lim.waited == pytest.approx(20.0)
    assert lim.per_minute == pytest.approx(18.0)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 12),
    st.floats(0.5, 60.0),
    st.lists(st.floats(0.0, 5.0), min_size=1, max_size=200),
)
def test_no_window_ever_holds_more_than_the_budget(
    n: int, window: float, gaps: list[float]
) -> None:
    clk = FakeClock()
    lim = RateLimiter(n, window, clock=clk, sleep=clk.sleep)
    times = []
    for g in gaps:
        clk.advance(g)  # caller's own pace between requests
        lim.acquire()
        times.append(clk.t)
    assert max_in_window(times, window) <= n
    # and it never waits when it does not have to: every wait ends exactly at a window edge
    for t in times:
        assert clk.t >= t


def test_pause_until_holds_everyone_then_releases() -> None:
    clk = FakeClock()
    lim = RateLimiter(100, 60.0, clock=clk, sleep=clk.sleep)
    lim.acquire()
    lim.pause_for(2.5)
    assert lim.acquire() == pytest.approx(2.5)
    assert clk.t == pytest.approx(1002.5)
    assert lim.acquire() == 0.0  # pause over


def test_threads_share_one_budget() -> None:
    lim = RateLimiter(20, 0.2)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            lim.acquire()
            with lock:
                stamps.append(__import__("time").monotonic())

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stamps) == 60
    assert max_in_window(sorted(stamps), 0.2 * 0.98) <= 20


@pytest.mark.parametrize(("n", "w"), [(0, 1.0), (1.5, 1.0), (5, 0.0), (5, -1)])
def test_bad_parameters_name_the_parameter(n: object, w: float) -> None:
    with pytest.raises(ConfigError, match="parameter of RateLimiter"):
        RateLimiter(n, w)  # type: ignore[arg-type]


def test_process_limiter_is_one_per_name_and_budget() -> None:
    a = process_limiter("test-x", 200)
    assert process_limiter("test-x", 200) is a
    assert process_limiter("test-x", 300) is not a
    assert repr(a) == "RateLimiter(200 per 60s)"


def test_margin_widens_the_spacing_against_network_jitter() -> None:
    clk = FakeClock()
    lim = RateLimiter(2, 10.0, margin_seconds=0.5, clock=clk, sleep=clk.sleep)
    got = []
    for _ in range(5):
        lim.acquire()
        got.append(clk.t - 1000)
    assert got == [0, 0, 10.5, 10.5, 21.0]
    assert lim.per_minute == 12.0  # the nominal budget
    assert process_limiter("test-m", 200)._span == pytest.approx(60.6)
    with pytest.raises(ConfigError, match="margin_seconds"):
        RateLimiter(2, 1.0, margin_seconds=-1)
