"""Live stream: trade-to-bar aggregation equals the historical bars for the same trades (unit,
property and end to end through the msgpack websocket stub with a dropped connection), handler
fan-out, reconnect with backoff, staleness in market hours."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from workbench.data.stream import LiveStream, StalenessMonitor, TradeBarAggregator
from workbench.errors import ConfigError

from .conftest import make_source
from .stub_server import KEY_ID, SECRET, AlpacaStub
from .ws_stub import StreamStub, trade_msg

T0 = datetime(2024, 1, 3, 15, 0, tzinfo=UTC)  # 10:00 New York, a regular session
SATURDAY = datetime(2024, 1, 6, 15, 0, tzinfo=UTC)


def oracle(trades: list[tuple[str, datetime, float, float]], every: str = "1m") -> pl.DataFrame:
    """Historical bars for the trades, computed independently with polars."""
    from workbench.data.schema import validate_bars

    df = pl.DataFrame(
        trades,
        schema={
            "symbol": pl.String,
            "ts": pl.Datetime("us", "UTC"),
            "p": pl.Float64,
            "s": pl.Float64,
        },
        orient="row",
    ).with_row_index("seq")
    bars = (
        df.sort("symbol", "ts", "seq")
        .group_by_dynamic("ts", every=every, closed="left", label="left", group_by="symbol")
        .agg(
            open=pl.col("p").first(),
            high=pl.col("p").max(),
            low=pl.col("p").min(),
            close=pl.col("p").last(),
            volume=pl.col("s").sum(),
            vwap=(pl.col("p") * pl.col("s")).sum() / pl.col("s").sum(),
            trade_count=pl.len(),
        )
    )
    return validate_bars(bars)


def make_trades(symbols: list[str], start: datetime, minutes: int, seed: int = 0):
    rng = random.Random(seed)
    out = []
    price = {s: 100.0 + 10 * i for i, s in enumerate(symbols)}
    for m in range(minutes):
        for _ in range(rng.randint(0, 12)):
            s = rng.choice(symbols)
            price[s] = round(price[s] * (1 + rng.gauss(0, 0.001)), 4)
            ts = start + timedelta(minutes=m, microseconds=rng.randint(0, 59_999_999))
            out.append((s, ts, price[s], float(rng.randint(1, 500))))
    # time order per minute, with a few neighbours swapped inside the minute (out-of-order delivery)
    out.sort(key=lambda t: (t[1].replace(second=0, microsecond=0), rng.random()))
    return out


def test_ohlc_in_time_order_volume_vwap_count_and_minute_start() -> None:
    agg = TradeBarAggregator("1Min")
    t = T0 + timedelta(seconds=5)
    assert agg.add("AAPL", t + timedelta(seconds=30), 101.0, 100) == []
    assert agg.add("AAPL", t, 100.0, 200) == []  # earlier trade arrives later: still the open
    assert agg.add("AAPL", t + timedelta(seconds=50), 99.5, 100) == []
    assert agg.add("AAPL", t + timedelta(seconds=10), 102.0, 100) == []
    (bar,) = agg.add("AAPL", T0 + timedelta(minutes=1, seconds=1), 103.0, 1)  # next minute emits
    assert bar == {
        "symbol": "AAPL",
        "ts": T0,
        "open": 100.0,
        "high": 102.0,
        "low": 99.5,
        "close": 99.5,
        "volume": 500.0,
        "vwap": (100 * 200 + 101 * 100 + 99.5 * 100 + 102 * 100) / 500,
        "trade_count": 4,
    }
    (last,) = agg.flush()
    assert last["ts"] == T0 + timedelta(minutes=1) and last["trade_count"] == 1
    assert agg.flush() == []


def test_symbols_are_independent_and_advance_closes_quiet_bars() -> None:
    got = []
    agg = TradeBarAggregator("5Min", on_bar=got.append)
    agg.add("AAPL", T0 + timedelta(minutes=1), 10.0, 1)
    agg.add("MSFT", T0 + timedelta(minutes=3), 20.0, 1)
    agg.add("AAPL", T0 + timedelta(minutes=6), 11.0, 1)  # AAPL's 15:00 bar done, MSFT's not
    assert [(b["symbol"], b["ts"]) for b in got] == [("AAPL", T0)]
    assert agg.advance(T0 + timedelta(minutes=4, seconds=59)) == []
    assert [b["symbol"] for b in agg.advance(T0 + timedelta(minutes=5))] == ["MSFT"]
    assert len(got) == 2
    # a trade for a bar already emitted is late: dropped and counted, never a second bar
    assert agg.add("MSFT", T0 + timedelta(minutes=4), 21.0, 1) == []
    assert agg.late == 1
    agg.flush()  # on_bar receives the flushed bar too
    frame = TradeBarAggregator.to_frame(got)
    assert frame.height == 3 and frame["ts"].dtype == pl.Datetime("us", "UTC")


def test_daily_timeframe_is_refused() -> None:
    with pytest.raises(ConfigError, match="intraday timeframe"):
        TradeBarAggregator("1Day")


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([("1Min", "1m"), ("5Min", "5m"), ("15Min", "15m")]))
def test_aggregator_equals_the_historical_oracle(seed: int, tf: tuple[str, str]) -> None:
    trades = make_trades(["AAPL", "MSFT", "SPY"], T0, 40, seed)
    if not trades:
        return
    agg = TradeBarAggregator(tf[0])
    bars = []
    for s, ts, p, q in trades:
        bars += agg.add(s, ts, p, q)
    bars += agg.flush()
    assert agg.late == 0
    assert_frame_equal(
        TradeBarAggregator.to_frame(bars),
        oracle(trades, tf[1]),
        check_exact=False,
        rel_tol=1e-12,
        abs_tol=0,
    )


def test_staleness_only_in_market_hours_and_once_per_quiet_spell() -> None:
    now = [T0]
    mon = StalenessMonitor(timedelta(seconds=30), now=lambda: now[0])
    now[0] += timedelta(seconds=29)
    assert mon.check() is False
    now[0] += timedelta(seconds=2)
    assert mon.check() is True and mon.stale
    assert mon.check() is False  # reported once
    mon.touch()
    assert not mon.stale and mon.quiet_for() == timedelta(0)
    weekend = StalenessMonitor(timedelta(seconds=30), now=lambda: SATURDAY)
    weekend.last_message = SATURDAY - timedelta(hours=5)
    assert weekend.check() is False


def wait_for(cond, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_stream_bars_equal_historical_bars_through_a_dropped_connection() -> None:
    syms = ["AAPL", "MSFT", "SPY"]
    trades = make_trades(syms, T0, 30, seed=11)
    msgs = [trade_msg(s, ts, p, q, i) for i, (s, ts, p, q) in enumerate(trades)]
    hist = oracle(trades)
    with StreamStub(msgs, drop_after=len(msgs) // 3) as ws, AlpacaStub({"1Min": hist}) as rest:
        got: list[dict] = []
        seen: list[object] = []
        stream = LiveStream(
            key_id=KEY_ID,
            secret=SECRET,
            url=ws.url,
            reconnect_min=0.02,
            reconnect_max=0.1,
            check_every=0.05,
            now=lambda: T0,
        )
        lock = threading.Lock()

        def keep(bar: dict) -> None:
            with lock:
                got.append(bar)

        stream.aggregate_trades(keep, *syms)
        stream.on_trades(seen.append, "AAPL")  # a second handler on the same symbol
        stream.start()
        try:
            assert wait_for(lambda: stream.messages == len(msgs)), (stream.messages, len(msgs))
        finally:
            stream.stop()
        assert ws.connections == 2 and ws.auth_failures == 0  # reconnected once, resumed
        assert ws.subscriptions[-1]["trades"] == syms or sorted(
            ws.subscriptions[-1]["trades"]
        ) == sorted(syms)
        assert len(seen) == sum(1 for t in trades if t[0] == "AAPL")
        streamed = TradeBarAggregator.to_frame(got)
        fetched = make_source(rest).fetch(syms, "1Min", T0, T0 + timedelta(minutes=30))
    assert_frame_equal(streamed, fetched, check_exact=False, rel_tol=1e-12, abs_tol=0)
    assert streamed.height == hist.height > 50


def test_stream_goes_stale_when_quiet_in_market_hours() -> None:
    m0 = time.monotonic()
    with StreamStub([]) as ws:
        stream = LiveStream(
            key_id=KEY_ID,
            secret=SECRET,
            url=ws.url,
            stale_after=timedelta(seconds=0.2),
            check_every=0.03,
            now=lambda: T0 + timedelta(seconds=time.monotonic() - m0),
        )
        quiet: list[timedelta] = []
        stream.on_stale(quiet.append)
        stream.on_quotes(lambda q: None, "AAPL")
        stream.on_bars(lambda b: None, "AAPL")
        stream.start()
        try:
            assert wait_for(lambda: bool(quiet), 5.0)
        finally:
            stream.stop()
        sub = ws.subscriptions[0]
        assert sub["quotes"] == ["AAPL"] and sub["bars"] == ["AAPL"]
    assert quiet[0] > timedelta(seconds=0.2) and len(quiet) == 1


def test_stream_needs_keys_and_symbols(monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.errors import CredentialsError

    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
    with pytest.raises(CredentialsError, match="APCA_API_KEY_ID"):
        LiveStream()
    s = LiveStream(key_id=KEY_ID, secret=SECRET)
    with pytest.raises(ConfigError, match="at least one symbol"):
        s.on_trades(lambda t: None)
    assert KEY_ID not in repr(s)
