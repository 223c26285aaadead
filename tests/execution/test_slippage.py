"""Slippage model: a planted curve is recovered, thin symbols shrink to the prior, versions
round-trip, paper fills teach no impact, and a learned backtest charges the forecasts exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from workbench.backtest import run_backtest
from workbench.backtest.costs import SlippageCurve, tod_bucket, u_shape
from workbench.config import BacktestConfig, CostsConfig
from workbench.errors import ConfigError, StoreError
from workbench.execution.slippage import (
    SlippageModel,
    SlippageStore,
    bar_estimates,
    observations,
)

SYMS = ["S0", "S1", "S2", "S3", "S4", "S5"]
FIXED = dict(zip(SYMS, [1.5, 2.0, 2.5, 3.0, 4.0, 5.0], strict=True))  # bps
IMPACT = dict(zip(SYMS, [0.5, 0.8, 1.0, 1.2, 1.5, 2.0], strict=True))  # x sigma_bps x sqrt(q/V)
U_BPS = 3.0  # time-of-day: U_BPS * U(ts), U = 1 at the open and the close, 0 at midday
DAY0 = datetime(2024, 4, 1, 13, 30, tzinfo=UTC)  # 09:30 New York (EDT all month)


def planted(sym, ts_us, sigma, qty, volume):
    return FIXED[sym] + U_BPS * u_shape(ts_us) + IMPACT[sym] * 1e4 * sigma * np.sqrt(qty / volume)


def planted_obs(n_days: int = 12, seed: int = 0, noise: float = 1.0, venue: str = "sim"):
    """Fills at every 5-minute bar of ``n_days`` sessions for each symbol, with noise."""
    rng = np.random.default_rng(seed)
    starts = [DAY0 + timedelta(days=d) + timedelta(minutes=5 * i) for d in range(n_days)
              for i in range(78)]  # fmt: skip
    rows = []
    for sym in SYMS:
        ts = np.array([t.replace(tzinfo=None) for t in starts], dtype="datetime64[us]")
        n = len(ts)
        sigma = rng.uniform(10e-4, 30e-4, n)
        volume = rng.uniform(5e4, 2e5, n)
        qty = volume * rng.uniform(0.001, 0.2, n)
        ts_us = ts.astype(np.int64)
        slip = planted(sym, ts_us, sigma, qty, volume) + rng.normal(0, noise, n)
        side = rng.choice([-1.0, 1.0], n)
        rows.append(pl.DataFrame({
            "execution_id": [f"{venue}-{sym}-{i}" for i in range(n)], "symbol": sym,
            "ts": pl.Series(ts).dt.replace_time_zone("UTC"), "decided_at": None,
            "qty": side * qty, "arrival": 100.0, "price": 100.0 * (1 + side * slip * 1e-4),
            "venue": venue, "sigma": sigma, "volume": volume, "slip_bps": slip,
        }))  # fmt: skip
    return pl.concat(rows).with_columns(pl.col("decided_at").cast(pl.Datetime("us", "UTC")))


@pytest.fixture(scope="module")
def obs() -> pl.DataFrame:
    return planted_obs()


@pytest.fixture(scope="module")
def model(obs) -> SlippageModel:
    return SlippageModel().fit(obs)


def recovery(curve, obs) -> pl.DataFrame:
    """Planted vs fitted cost per (symbol, bucket) of a typical order (sigma 20 bps, 5% of
    volume) and of a vanishingly small one, and the time-of-day term."""
    ts_us = obs["ts"].dt.epoch("us").to_numpy()
    b = tod_bucket(ts_us)
    u = U_BPS * u_shape(ts_us)
    u_min = min(float(u[b == k].mean()) for k in range(13))
    typical = 1e4 * 20e-4 * np.sqrt(0.05)
    rows = []
    for sym in SYMS:
        for k in range(13):
            tod = float(u[b == k].mean())  # the planted curve averaged over the bucket's fills
            rows.append({
                "symbol": sym, "bucket": k, "planted_tod": tod - u_min, "fitted_tod": curve.tod_bps[k],
                "planted_small": FIXED[sym] + tod, "fitted_small": curve.fixed(sym) + curve.tod_bps[k],
                "planted_typical": FIXED[sym] + tod + IMPACT[sym] * typical,
                "fitted_typical": curve.fixed(sym) + curve.tod_bps[k] + curve.impact_of(sym) * typical,
            })  # fmt: skip
    return pl.DataFrame(rows).with_columns(
        (pl.col("fitted_typical") / pl.col("planted_typical") - 1).abs().alias("err_typical"),
        (pl.col("fitted_small") / pl.col("planted_small") - 1).abs().alias("err_small"),
    )


def test_fitted_curve_recovers_the_planted_u_shape_and_sqrt_impact(obs, model) -> None:
    curve = model.curve
    rec = recovery(curve, obs)
    assert rec["err_typical"].max() < 0.10  # every symbol, every bucket, within 10%
    assert rec["err_small"].max() < 0.15  # small orders: a few bps, 2% shrinkage to the prior
    tod = rec.filter(pl.col("symbol") == "S0")
    np.testing.assert_allclose(tod["fitted_tod"], tod["planted_tod"], atol=0.3)  # bps
    for sym in SYMS:
        assert curve.impact_of(sym) == pytest.approx(IMPACT[sym], rel=0.10)
    # higher at the open and the close than at midday
    assert curve.tod_bps[0] > curve.tod_bps[6] + 2 and curve.tod_bps[12] > curve.tod_bps[6] + 2
    # forecast and spread_forecast read the same curve
    t = DAY0 + timedelta(minutes=5)
    tus = int(np.datetime64(t.replace(tzinfo=None), "us").astype(np.int64))
    want = planted("S2", np.array([tus]), 20e-4, 1e4, 1e5)[0]
    got = model.forecast("S2", "buy", 1e4, 100.0, t, sigma=20e-4, volume=1e5)
    assert got == pytest.approx(want, rel=0.10)
    assert model.spread_forecast("S2", t) == pytest.approx(curve.fixed("S2") + curve.tod_bps[0])
    assert model.forecast("S2", "sell", 1e4, 100.0, t, sigma=20e-4, volume=1e5) == got


def test_a_symbol_with_three_fills_stays_near_the_prior(obs) -> None:
    thin = planted_obs(n_days=1, seed=5).filter(pl.col("symbol") == "S0").head(3)
    thin = thin.with_columns(
        pl.lit("THIN").alias("symbol"), pl.lit(40.0).alias("slip_bps"),
        (pl.lit("thin-") + pl.col("execution_id")).alias("execution_id"),
    )  # fmt: skip
    many = planted_obs(n_days=4, seed=6).filter(pl.col("symbol") == "S0").with_columns(
        pl.lit("MANY").alias("symbol"), (pl.col("slip_bps") + 20.0).alias("slip_bps"),
        (pl.lit("many-") + pl.col("execution_id")).alias("execution_id"),
    )  # fmt: skip
    curve = SlippageModel().fit(pl.concat([obs, thin, many])).curve
    prior = curve.prior_fixed_bps
    raw_gap = 40.0 - prior  # what the three fills alone would say (roughly)
    assert abs(curve.fixed("THIN") - prior) < 0.2 * raw_gap
    # a symbol with hundreds of fills gets its own level (FIXED[S0] + 20 bps)
    assert curve.fixed("MANY") == pytest.approx(FIXED["S0"] + 20.0, rel=0.1)
    assert curve.fixed("NEVER_SEEN") == prior


def test_paper_fills_teach_no_impact_unless_configured(obs) -> None:
    paper = planted_obs(n_days=12, seed=9, venue="alpaca-paper").with_columns(
        (
            pl.col("slip_bps")
            - 1e4
            * pl.col("sigma")
            * (pl.col("qty").abs() / pl.col("volume")).sqrt()
            * pl.col("symbol").replace_strict(IMPACT)
        ).alias("slip_bps")
    )  # fmt: skip  (paper: no size impact at all)
    both = pl.concat([obs, paper])
    ignore = SlippageModel().fit(both).curve
    learn = SlippageModel(learn_paper_impact=True).fit(both).curve
    for sym in SYMS:
        assert ignore.impact_of(sym) == pytest.approx(IMPACT[sym], rel=0.10)
        assert learn.impact_of(sym) < 0.75 * IMPACT[sym]  # diluted by size-blind fills


def test_versions_round_trip_and_reruns_are_idempotent(tmp_path, obs) -> None:
    bars = _bars()
    fills = _fills_from(bars)
    store = SlippageStore(tmp_path / "slip")
    v1 = store.update(fills.head(40), bars)
    v2 = store.update(fills, bars)
    assert (v1.version, v2.version) == (1, 2) and store.versions() == [1, 2]
    assert store.update(fills, bars).version == 2  # nothing new, no new version
    assert store.observations().height == fills.height
    loaded = SlippageCurve.load(tmp_path / "slip")
    assert loaded.to_dict() == v2.to_dict()
    assert SlippageCurve.load(tmp_path / "slip", version=1).to_dict() == v1.to_dict()
    path = tmp_path / "slip" / "v000002.json"
    path.write_text(path.read_text().replace('"version": 2', '"version": 3'))
    with pytest.raises(StoreError, match="checksum"):
        SlippageCurve.load(tmp_path / "slip")
    with pytest.raises(ConfigError, match="holds no slippage model"):
        SlippageCurve.load(tmp_path / "empty")


def test_observations_measure_cost_against_the_arrival_price() -> None:
    bars = _bars()
    fills = _fills_from(bars)
    o = observations(fills, bars)
    assert o.height == fills.height
    f = fills.sort("ts", "symbol", "execution_id")
    side = np.sign(f["qty"].to_numpy())
    want = side * (f["price"].to_numpy() / f["ref_price"].to_numpy() - 1) * 1e4
    np.testing.assert_allclose(o["slip_bps"].to_numpy(), want, rtol=1e-12)
    est = bar_estimates(bars)
    got = o.join(est.rename({"ts": "decided_at"}), on=["symbol", "decided_at"])
    np.testing.assert_array_equal(got["sigma"].to_numpy(), got["sigma_right"].to_numpy())


def test_learned_costs_change_the_backtest_exactly_as_the_forecasts_say(tmp_path, model) -> None:
    root = tmp_path / "slip"
    model.curve.save(root)
    bars = _bars()
    rng = np.random.default_rng(1)
    targets = bars.select("symbol", "ts").with_columns(
        pl.Series("target", rng.choice([-0.3, 0.0, 0.3], bars.height))
    )
    learned = CostsConfig(model="learned", slippage_path=str(root), commission_per_share=0.005)
    res = run_backtest(bars, targets, config=BacktestConfig(costs=learned))
    base = run_backtest(bars, targets, config=BacktestConfig(costs=CostsConfig(
        commission_per_share=0.005)))  # fmt: skip
    assert res.fills.height > 50
    assert not np.allclose(res.fills["price"].to_numpy(), base.fills["price"].to_numpy())
    est = bar_estimates(bars, model.curve.estimate_span).rename({"ts": "decision_ts"})
    f = res.fills.join(est, on=["symbol", "decision_ts"], how="left")
    want = []
    for r in f.iter_rows(named=True):
        bps = model.forecast(
            r["symbol"],
            1 if r["qty"] > 0 else -1,
            abs(r["qty"]),
            r["ref_price"],
            r["ts"],
            sigma=r["sigma"],
            volume=r["volume_ewm"],
        )
        want.append(r["ref_price"] * (1 + np.sign(r["qty"]) * bps * 1e-4))  # fmt: skip
    np.testing.assert_allclose(f["price"].to_numpy(), want, rtol=1e-13)
    # commission stays as configured
    np.testing.assert_allclose(f["commission"].to_numpy(), 0.005 * f["qty"].abs().to_numpy())


def test_learned_costs_without_a_model_say_how_to_fix_it(tmp_path) -> None:
    bars = _bars()
    tg = bars.select("symbol", "ts").with_columns(pl.lit(0.1).alias("target"))
    cfg = BacktestConfig(costs=CostsConfig(model="learned", slippage_path=str(tmp_path / "x")))
    with pytest.raises(ConfigError, match="backtest.costs.model is 'learned'"):
        run_backtest(bars, tg, config=cfg)


def _bars(n_days: int = 2) -> pl.DataFrame:
    rng = np.random.default_rng(3)
    out = []
    for s in SYMS[:3]:
        ts = [DAY0 + timedelta(days=d, minutes=5 * i) for d in range(n_days) for i in range(78)]
        c = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, len(ts))))
        o = np.r_[100.0, c[:-1]]
        out.append(pl.DataFrame({
            "symbol": s, "ts": ts, "open": o, "high": np.maximum(o, c) * 1.001,
            "low": np.minimum(o, c) * 0.999, "close": c, "volume": rng.uniform(1e4, 5e4, len(ts)),
        }))  # fmt: skip
    df = pl.concat(out).with_columns(pl.col("ts").dt.cast_time_unit("us"))
    return df.with_columns(vwap=(pl.col("high") + pl.col("low") + pl.col("close")) / 3,
                           trade_count=pl.lit(100, dtype=pl.Int64))  # fmt: skip


def _fills_from(bars: pl.DataFrame) -> pl.DataFrame:
    """Fills at each symbol's every 3rd bar's open, decided at the bar before, 3 bps cost."""
    b = bars.sort("symbol", "ts").with_columns(
        pl.col("ts").shift(1).over("symbol").alias("decided_at"), pl.int_range(pl.len()).over(
            "symbol").alias("i"))  # fmt: skip
    b = b.filter(pl.col("i") % 3 == 1)
    side = np.where(np.arange(b.height) % 2 == 0, 1.0, -1.0)
    return pl.DataFrame({
        "client_order_id": [f"c{i}" for i in range(b.height)], "symbol": b["symbol"],
        "decided_at": b["decided_at"], "ts": b["ts"], "qty": side * 100.0,
        "ref_price": b["open"], "price": b["open"] * (1 + side * 3e-4), "commission": 0.0,
        "cost": 0.0, "execution_id": [f"e{i}" for i in range(b.height)], "venue": "sim",
    })  # fmt: skip


def test_the_limit_buffer_is_at_least_the_forecast(model) -> None:
    from workbench.config import ExecutionPolicyConfig
    from workbench.execution.slippage import SlippageAwarePolicy

    cfg = ExecutionPolicyConfig(order_type="limit", limit_buffer_bps=1.0)
    pol = SlippageAwarePolicy(cfg, curve=model.curve)
    t = DAY0 + timedelta(minutes=5)  # the open's bucket: the costliest
    want = model.forecast("S5", "buy", 500.0, 100.0, t)
    assert want > 1.0
    (buy,) = pol.plan("S5", 500.0, position=0.0, price=100.0, decided_at=t)
    assert buy.limit_price == round(100.0 * (1 + want * 1e-4), 2)
    (sell,) = pol.plan("S5", -500.0, position=0.0, price=100.0, decided_at=t)
    assert sell.limit_price == round(100.0 * (1 - want * 1e-4), 2)
    assert pol.config.limit_buffer_bps == 1.0  # the configured buffer is left as it was
    cheap = SlippageAwarePolicy(cfg.model_copy(update={"limit_buffer_bps": 500.0}),
                                curve=model.curve)  # fmt: skip
    (b2,) = cheap.plan("S5", 500.0, position=0.0, price=100.0, decided_at=t)
    assert b2.limit_price == round(100.0 * 1.05, 2)  # a larger configured buffer wins
