"""Bar sources: live bars from the trade stream become complete timestamps, once each, in order."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from workbench.data.stream import TradeBarAggregator
from workbench.execution.bars import LiveBars

T0 = datetime(2024, 11, 26, 14, 30, tzinfo=UTC)


class FakeStream:
    def aggregate_trades(self, on_bar, *symbols, timeframe="1Min"):
        self.agg = TradeBarAggregator(timeframe, on_bar)
        return self.agg


class StepClock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def now(self) -> datetime:
        return self.t


def test_live_bars_emit_complete_timestamps_once_and_drop_late_bars() -> None:
    stream, clock = FakeStream(), StepClock(T0)
    live = LiveBars(stream, ["A", "B"], "5Min", clock=clock, grace=timedelta(seconds=2),
                    session_close=T0 + timedelta(minutes=15))  # fmt: skip
    agg = stream.agg
    for sym, dt, px in (("A", 10, 100.0), ("B", 20, 50.0), ("A", 200, 101.0)):
        agg.add(sym, T0 + timedelta(seconds=dt), px, 10)
    out = []

    async def consume():
        gen = live.stream_bars()
        clock.t = T0 + timedelta(minutes=5, seconds=3)  # the first bar has ended (+ grace)
        out.append(await gen.__anext__())
        agg.add("B", T0 + timedelta(seconds=100), 49.0, 5)  # a late trade of the emitted bar
        agg.add("A", T0 + timedelta(minutes=6), 102.0, 10)
        clock.t = T0 + timedelta(minutes=10, seconds=3)
        out.append(await gen.__anext__())
        clock.t = T0 + timedelta(minutes=20)  # after the close: the source ends
        rest = [item async for item in gen]
        return rest

    rest = asyncio.run(consume())
    (t1, f1), (t2, f2) = out
    assert t1 == T0 and f1["symbol"].to_list() == ["A", "B"]
    assert f1.filter(f1["symbol"] == "A")["close"].item() == 101.0  # last trade of the bar
    assert t2 == T0 + timedelta(minutes=5) and f2["symbol"].to_list() == ["A"]
    assert rest == []
