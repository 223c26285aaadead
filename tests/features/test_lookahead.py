"""Look-ahead guard over every registered feature and label, and proof that it bites."""

from __future__ import annotations

import polars as pl
import pytest

from workbench.config import FeatureSpec
from workbench.features import build_features
from workbench.features.lookahead import (
    LookAheadError,
    check_feature,
    check_history_stability,
    check_label_causality,
    check_truncation,
)
from workbench.features.registry import (
    feature_names,
    get_feature,
    register_feature,
    unregister_feature,
)
from workbench.labels import get_label, label_names, triple_barrier


@pytest.mark.parametrize("name", feature_names())
def test_every_registered_feature_is_causal_and_history_stable(bars, name):
    check_feature(name, bars, timeframe="5Min")


@pytest.mark.parametrize("name", label_names())
def test_every_registered_label_is_known_at_t1(bars, name):
    fn = get_label(name)
    check_label_causality(lambda b: fn(b, 12 if name != "trend" else 24), bars, name=name)


def test_meta_labels_with_a_primary_side_are_known_at_t1(bars):
    with_side = bars.with_columns(
        pl.when(pl.col("close") > pl.col("open")).then(1.0).otherwise(-1.0).alias("side")
    )
    check_label_causality(
        lambda b: triple_barrier(b, 8, pt=1.0, sl=1.0, unit="vol", window=20, side="side"),
        with_side,
        name="meta triple_barrier",
    )


def test_configured_feature_sets_are_causal(bars):
    from workbench.config import load_config

    configured = sorted(load_config().feature_sets)
    assert {"intraday_reversal", "intraday_mean_reversion", "swing_trend_following"} <= set(
        configured
    )
    for name in configured:
        check_truncation(lambda b, n=name: build_features(b, n), bars, name=name)


def test_run_time_guard_checks_the_columns_actually_used(bars, temporary_feature):
    """The train step's guard: a feature registered at run time and put in a feature set is
    caught on a small sample of the bars; columns not trained on are not compared."""
    from workbench.features.lookahead import check_feature_set

    def peek(*, column: str = "close", by: str = "symbol") -> pl.Expr:
        return (pl.col(column).shift(-1) / pl.col(column) - 1).over(by)

    temporary_feature("peek_next_close_rt", peek, 1)
    leaky = [
        FeatureSpec(name="returns", params={"periods": 1}, alias="ret_1"),
        FeatureSpec(name="peek_next_close_rt", alias="peek"),
    ]
    with pytest.raises(LookAheadError, match="'peek'.*reads the future"):
        check_feature_set(leaky, bars, columns=["ret_1", "peek"], max_bars=400)
    assert check_feature_set(leaky, bars, columns=["ret_1"], max_bars=400) == 1
    assert check_feature_set("intraday_reversal", bars, max_bars=400) == 6
    assert check_feature_set(leaky, bars.head(0)) == 0


def test_train_step_refuses_a_leaky_feature_set(bars, temporary_feature, tmp_path, monkeypatch):
    """run_train runs the guard before any search: a leaky feature stops it with the reason."""
    from workbench.config import load_config
    from workbench.data.store import BarStore
    from workbench.labels import forward_return
    from workbench.stages.train import run_train

    def peek(*, column: str = "close", by: str = "symbol") -> pl.Expr:
        return (pl.col(column).shift(-1) / pl.col(column) - 1).over(by)

    temporary_feature("peek_next_close_train", peek, 1)
    cfg = load_config()
    sets = {**cfg.feature_sets, "leaky": (FeatureSpec(name="peek_next_close_train", alias="pk"),)}
    strat = cfg.strategies["intraday_reversal"].model_copy(update={"feature_set": "leaky"})
    cfg = cfg.model_copy(
        update={"feature_sets": sets, "strategies": {**cfg.strategies, "intraday_reversal": strat}}
    )
    BarStore(tmp_path / "bars", cfg.store.partition).write(bars, "5Min")
    table = (
        build_features(bars, list(sets["leaky"]))
        .join(forward_return(bars, 1).select("symbol", "ts", "label", "t1"), on=["symbol", "ts"])
        .drop_nulls()
    )
    table.write_parquet(tmp_path / "features.parquet")
    monkeypatch.setattr(
        "workbench.stages.train.run_search", lambda *a, **k: pytest.fail("searched a leaky set")
    )
    with pytest.raises(LookAheadError, match="'pk'.*reads the future"):
        run_train(cfg, features_path=tmp_path / "features.parquet", store_root=tmp_path / "bars",
                  strategy="intraday_reversal", timeframe="5Min", seed=0, progress=False)  # fmt: skip


@pytest.fixture
def temporary_feature():
    names = []

    def add(name, factory, warmup):
        register_feature(name, warmup=warmup)(factory)
        names.append(name)

    yield add
    for name in names:
        unregister_feature(name)


def test_a_newly_registered_leaky_feature_is_caught(bars, temporary_feature):
    def peek(*, column: str = "close", by: str = "symbol") -> pl.Expr:
        return (pl.col(column).shift(-1) / pl.col(column) - 1).over(by)

    temporary_feature("peek_next_close", peek, 1)
    assert "peek_next_close" in feature_names()  # so the parametrized guard would include it
    with pytest.raises(LookAheadError, match="reads the future"):
        check_feature("peek_next_close", bars)


def test_a_centered_window_is_caught(bars, temporary_feature):
    def centered(*, window: int = 5, by: str = "symbol") -> pl.Expr:
        return pl.col("close").rolling_mean(window, center=True).over(by)

    temporary_feature("centered_mean", centered, 4)
    with pytest.raises(LookAheadError, match="reads the future"):
        check_feature("centered_mean", bars)


def test_an_understated_warmup_is_caught(bars, temporary_feature):
    temporary_feature("ema_short_warmup", get_feature("ema").factory, lambda p, tf: p["window"] - 1)
    with pytest.raises(LookAheadError, match="documented warm-up"):
        check_feature("ema_short_warmup", bars)


def test_cumulative_features_never_stabilise(bars):
    spec = [FeatureSpec(name="returns")]

    def cumulative(b: pl.DataFrame) -> pl.DataFrame:
        out = build_features(b, spec)
        return out.with_columns(pl.col("returns").cum_sum().over("symbol"))

    check_truncation(cumulative, bars)  # causal ...
    with pytest.raises(LookAheadError):
        check_history_stability(cumulative, bars, warmup=50)  # ... but depends on all history


def _forward_return_with(bars: pl.DataFrame, t1_shift: int, peek: int) -> pl.DataFrame:
    nxt = pl.col("open").shift(-1).over("symbol")
    later = pl.col("open").shift(-peek).over("symbol")
    return bars.select(
        "symbol",
        "ts",
        pl.col("ts").shift(-t1_shift).over("symbol").alias("t1"),
        (later / nxt - 1).alias("ret"),
    )


def test_label_with_understated_t1_is_caught(bars):
    with pytest.raises(LookAheadError, match="after its t1"):
        check_label_causality(lambda b: _forward_return_with(b, t1_shift=2, peek=5), bars)
    check_label_causality(lambda b: _forward_return_with(b, t1_shift=5, peek=5), bars)


def test_label_with_t1_not_after_ts_is_caught(bars):
    with pytest.raises(LookAheadError, match="<= ts"):
        check_label_causality(lambda b: _forward_return_with(b, t1_shift=0, peek=1), bars)


def test_features_never_read_labels_or_future_columns(bars):
    """Features are built from bar columns only: adding a label column changes nothing."""
    from workbench.labels import forward_return

    fwd = forward_return(bars, 12).select("symbol", "ts", pl.col("ret").alias("future"))
    spiked = bars.join(fwd, on=["symbol", "ts"], how="left")
    a = build_features(bars, "intraday_mean_reversion")
    b = build_features(spiked, "intraday_mean_reversion")
    assert a.equals(b)
