"""Replayed sessions on the simulated venue: fills at the next open with costs, ends flat, no peeking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import polars as pl
import pytest

from workbench.config import (
    CostsConfig,
    DecisionConfig,
    LimitsConfig,
    SizingConfig,
    StrategyConfig,
    StrategyRiskConfig,
)
from workbench.execution.session import run_session
from workbench.execution.sim_broker import SimulatedBroker
from workbench.risk import RiskPolicy

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
COSTS = CostsConfig(
    commission_per_share=0.01, commission_min=1.0, half_spread_bps=5.0, slippage_bps=1.0
)


class RetFeature:
    """Feature = last bar's return, computed from bars seen so far only."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def update(self, bars: pl.DataFrame) -> pl.DataFrame:
        rows = []
        for r in bars.sort("ts").iter_rows(named=True):
            prev = self.last.get(r["symbol"])
            rows.append(
                {
                    "symbol": r["symbol"],
                    "ts": r["ts"],
                    "ret": None if prev is None else r["close"] / prev - 1,
                }
            )
            self.last[r["symbol"]] = r["close"]
        return pl.DataFrame(
            rows, schema={"symbol": pl.String, "ts": pl.Datetime("us", "UTC"), "ret": pl.Float64}
        )


def session_bars(n: int = 30) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    o = np.r_[100.0, c[:-1]]
    return pl.DataFrame(
        {
            "symbol": "A",
            "ts": [T0 + timedelta(minutes=5 * i) for i in range(n)],
            "open": o,
            "high": np.maximum(o, c),
            "low": np.minimum(o, c),
            "close": c,
            "volume": 1000.0,
        }
    )


def _policy(fraction: float = 0.5) -> RiskPolicy:
    strat = StrategyConfig(
        feature_set="x",
        type="intraday",
        decision=DecisionConfig(long=0.0, short=0.0),
        sizing=SizingConfig(fraction=fraction),
        risk=StrategyRiskConfig(limits=LimitsConfig(max_position=None), eod_flatten_minutes=5),
    )
    return RiskPolicy.from_strategy(strat, name="fade", timeframe="5Min")


def test_session_trades_on_next_open_and_ends_flat() -> None:
    bars = session_bars(78)  # one full session, 09:30-15:55 ET
    broker = SimulatedBroker(100_000, COSTS)
    res = run_session(
        bars,
        T0 + timedelta(minutes=25),
        engine=RetFeature(),
        predict=lambda f: -f["ret"].to_numpy(),
        features=["ret"],
        policy=_policy(),
        broker=broker,
    )
    # the trades are the fade's, derived here from the bars alone: at each bar of the session
    # the side is -sign(last return); an order goes out where that side changes, sized to half
    # the equity (within a share), and fills at the next bar's open
    close = bars["close"].to_numpy()
    side = dict(
        zip(bars["ts"].to_list(), -np.sign(np.r_[np.nan, close[1:] / close[:-1] - 1]), strict=True)
    )
    eod = T0 + timedelta(minutes=5 * 76)  # the flatten decision, 5 minutes before the close
    held, want = 0.0, []
    for t in bars["ts"].to_list():
        if T0 + timedelta(minutes=25) <= t < eod and side[t] != held:
            want.append((t, side[t]))
            held = side[t]
    fills = res.fills.sort("ts")
    model = fills.filter(pl.col("decided_at") < eod)
    assert (
        len(want) > 20
        and [(t, np.sign(q)) for t, q in model.select("decided_at", "qty").iter_rows()] == want
    )
    equity = dict(res.pnl.select("ts", "equity").iter_rows())
    prices = dict(zip(bars["ts"].to_list(), close, strict=True))
    pos = np.cumsum(fills["qty"].to_numpy())
    for (t, s), p in zip(want, pos, strict=False):
        assert abs(p * prices[t] - s * 0.5 * equity[t]) <= prices[t], (t, p)
    assert fills["decided_at"][-1] == eod and pos[-1] == 0  # the flatten closes what was held
    assert (res.fills["ts"] > res.fills["decided_at"]).all()
    opens = dict(zip(bars["ts"].to_list(), bars["open"].to_list(), strict=True))
    assert all(opens[t] == p for t, p in zip(res.fills["ts"], res.fills["ref_price"], strict=True))
    assert broker.position("A") == 0  # flattened 5 minutes before the close, from the calendar
    last = res.fills.sort("ts")[-1]
    assert last["ts"].item() == T0 + timedelta(minutes=5 * 77)  # the 15:55 bar's open
    assert res.orders.filter(pl.col("reason") == "eod_flatten").height >= 1
    assert res.pnl["cum_pnl"][-1] == pytest.approx(broker.equity - 100_000)
    assert res.decisions.filter(
        pl.col("ts") < T0 + timedelta(minutes=25)
    ).is_empty()  # warm-up only


def test_constant_signal_trades_once() -> None:
    """The session rebalances on a change of target, not on every bar (it used to re-size each bar)."""
    bars = session_bars(60)
    broker = SimulatedBroker(100_000, COSTS)
    res = run_session(
        bars,
        T0 + timedelta(minutes=10),
        engine=RetFeature(),
        predict=lambda f: np.ones(f.height),
        features=["ret"],
        policy=_policy(),
        broker=broker,
    )
    assert res.fills.height == 1
    assert broker.position("A") > 0


START = T0 + timedelta(minutes=10)
NY = ZoneInfo("America/New_York")


def fade(costs: CostsConfig) -> tuple[pl.DataFrame, object, SimulatedBroker]:
    """The fade strategy over 60 bars on a venue with ``costs``; (bars, result, venue)."""
    bars = session_bars(60)
    broker = SimulatedBroker(100_000, costs)
    res = run_session(
        bars, START, engine=RetFeature(), predict=lambda f: -f["ret"].to_numpy(), features=["ret"],
        policy=_policy(), broker=broker,
    )  # fmt: skip
    return bars, res, broker


@cache
def frictionless() -> tuple[pl.DataFrame, object, SimulatedBroker]:
    """The same session on a venue without any cost (once for every case)."""
    return fade(CostsConfig(half_spread_bps=0.0))


def u_by_hand(t: datetime) -> float:
    """Time-of-day factor (2x - 1)^2, x the New York session's elapsed fraction (09:30-16:00)."""
    local = t.astimezone(NY)
    x = (local.hour * 60 + local.minute - 570) / 390
    return 1.0 if not 0 <= x <= 1 else (2 * x - 1) ** 2


def costs_by_hand(bars: pl.DataFrame, fills: pl.DataFrame, c: CostsConfig) -> dict[str, float]:
    """Each cost of the fills, from the config's formulas and pandas' EWMA (not the kernels):
    half-spread, flat slippage, its U-shaped extra, square-root impact on the venue's volatility
    and volume estimates at the decision bar, commission; and each fill's execution price."""
    seen = bars.filter(pl.col("ts") >= START)  # the venue sees the session's bars
    close = seen["close"].to_numpy()
    r2 = pd.Series(np.r_[np.nan, np.log(close[1:] / close[:-1]) ** 2])
    sigma = np.sqrt(r2.ewm(span=c.estimate_span, adjust=False, ignore_na=True).mean().to_numpy())
    volume = seen["volume"].to_pandas().ewm(span=c.estimate_span, adjust=False).mean().to_numpy()
    at = {t: i for i, t in enumerate(seen["ts"].to_list())}
    out = dict.fromkeys(("spread", "slippage", "u_shape", "impact", "commission"), 0.0)
    prices = []
    for q, ref, ts, dec in fills.select("qty", "ref_price", "ts", "decided_at").iter_rows():
        n, i = abs(q), at[dec]
        sg = 0.0 if np.isnan(sigma[i]) else sigma[i]
        parts = {
            "spread": n * ref * c.half_spread_bps * 1e-4,
            "slippage": n * ref * c.slippage_bps * 1e-4,
            "u_shape": n * ref * c.slippage_bps * 1e-4 * c.intraday_u_shape * u_by_hand(ts),
            "impact": n * ref * c.impact_coef * sg / np.sqrt(max(volume[i], 1.0)) * np.sqrt(n),
        }
        price = ref + np.sign(q) * sum(parts.values()) / n
        parts["commission"] = (
            max(c.commission_per_share * n + c.commission_bps * 1e-4 * n * price, c.commission_min)
            + c.commission_flat
        )
        prices.append(price)
        for k, v in parts.items():
            out[k] += v
    out["prices"] = prices  # type: ignore[assignment]
    return out


def borrow_by_hand(bars: pl.DataFrame, fills: pl.DataFrame, bps: float) -> float:
    """Borrow on every short held at a bar's close after the venue's first: the short's value at
    the close x the annual rate x the bar's spacing in days / 360 (ACT/360)."""
    seen = bars.filter(pl.col("ts") >= START)
    moves = dict(zip(fills["ts"].to_list(), fills["qty"].to_list(), strict=True))
    pos, total, prev = 0.0, 0.0, None
    for t, close in seen.select("ts", "close").iter_rows():
        pos += moves.get(t, 0.0)
        if prev is not None and pos < 0:
            total += -pos * close * bps * 1e-4 * ((t - prev).total_seconds() / 86400) / 360
        prev = t
    return total


def frictionless_pnl(bars: pl.DataFrame, fills: pl.DataFrame) -> float:
    """PnL of the same fills at their reference prices (the fill bar's open), marked at the last
    close: what the trades earn before any cost."""
    cash = -float((fills["qty"] * fills["ref_price"]).sum())
    return cash + float(fills["qty"].sum()) * float(bars["close"][-1])


CASES = {
    "commission": CostsConfig(half_spread_bps=0.0, commission_per_share=0.01, commission_min=1.0),
    "spread": CostsConfig(half_spread_bps=5.0),
    "slippage": CostsConfig(half_spread_bps=0.0, slippage_bps=2.0),
    "u_shape": CostsConfig(half_spread_bps=0.0, slippage_bps=2.0, intraday_u_shape=3.0),
    "impact": CostsConfig(half_spread_bps=0.0, impact_coef=0.1),
    "borrow": CostsConfig(half_spread_bps=0.0, borrow_bps_annual=10_000.0),
    "all": CostsConfig(
        commission_per_share=0.005,
        commission_min=1.0,
        half_spread_bps=3.0,
        slippage_bps=1.0,
        intraday_u_shape=2.0,
        impact_coef=0.05,
        borrow_bps_annual=5_000.0,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_cost_reduces_pnl_by_its_hand_computed_amount(case: str) -> None:
    c = CASES[case]
    bars, free, free_venue = frictionless()
    assert free.net_pnl == pytest.approx(frictionless_pnl(bars, free.fills), abs=1e-6)
    bars, res, venue = fade(c)
    hand = costs_by_hand(bars, res.fills, c)
    borrow = borrow_by_hand(bars, res.fills, c.borrow_bps_annual)
    # every fill at the reference open moved against the trade by exactly the costs' formulas
    np.testing.assert_allclose(res.fills["price"].to_numpy(), hand["prices"], rtol=1e-12)
    np.testing.assert_allclose(
        res.fills["commission"].to_numpy().sum(), hand["commission"], rtol=1e-12
    )
    assert sum(a for _, _, a in venue.borrow_charges) == pytest.approx(borrow, rel=1e-9)
    paid = sum(v for k, v in hand.items() if k != "prices")
    # the venue's PnL is the frictionless PnL of the same fills less every cost
    assert venue.equity - 100_000 == pytest.approx(
        frictionless_pnl(bars, res.fills) - paid - borrow, abs=1e-6
    )
    # the session's PnL (its risk book) carries every cost, the venue's borrow included
    assert res.net_pnl == pytest.approx(frictionless_pnl(bars, res.fills) - paid - borrow, abs=1e-6)
    # the cost of this case is there and material, and it never helps
    want = {"all": ("spread", "slippage", "u_shape", "impact", "commission")}.get(case, (case,))
    for k in want:
        assert (borrow if k == "borrow" else hand[k]) > 5.0, (k, hand, borrow)
    assert venue.equity < free_venue.equity


def test_the_session_pnl_carries_the_venues_borrow() -> None:
    _, res, venue = fade(CASES["borrow"])
    assert sum(a for _, _, a in venue.borrow_charges) > 5.0
    assert res.net_pnl == pytest.approx(venue.equity - 100_000, abs=1e-6)
