"""Feature sets: resolution, build, incremental engine."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.config import FeatureSpec, load_config
from workbench.errors import ConfigError, SchemaError
from workbench.features import FeatureEngine, build_features, resolve_feature_set
from workbench.features.registry import feature_names, get_feature

CONFIGURED = ("intraday_mean_reversion", "swing_trend_following")


@pytest.fixture(scope="module")
def cfg():
    return load_config()


@pytest.fixture(scope="module")
def long_bars():
    """16 sessions: past the swing set's multi-day warm-up (780 bars), which the shared 10-session
    fixture never leaves."""
    from tests.features.conftest import make_bars

    return make_bars(n_days=16)


def _enough(name, cfg, bars, long_bars):
    """The shared bars, or longer ones when the set's warm-up would leave too few rows."""
    need = resolve_feature_set(name, cfg).warmup("5Min") + 150
    return bars if bars["ts"].n_unique() > need else long_bars


def _close(a: pl.DataFrame, b: pl.DataFrame, rtol: float) -> None:
    assert a.select("symbol", "ts").equals(b.select("symbol", "ts"))
    for col in a.columns[2:]:
        x = a.get_column(col).to_numpy()
        y = b.get_column(col).to_numpy()
        assert np.array_equal(np.isnan(x), np.isnan(y)), f"{col}: null positions differ"
        ok = ~np.isnan(x)
        scale = np.nanmedian(np.abs(y)) if ok.any() else 0.0
        err = np.abs(x[ok] - y[ok]) - rtol * (np.abs(y[ok]) + scale)
        assert (err <= 0).all(), f"{col}: differs by up to {np.max(np.abs(x[ok] - y[ok])):.3e}"


@pytest.mark.parametrize("name", CONFIGURED)
def test_configured_sets_build_a_keyed_float_frame(bars, cfg, name, long_bars):
    bars = _enough(name, cfg, bars, long_bars)
    fs = resolve_feature_set(name, cfg)
    out = build_features(bars, name, cfg)
    assert out.columns == ["symbol", "ts", *fs.columns]
    assert out.select("symbol", "ts").equals(bars.select("symbol", "ts"))
    assert all(
        t == pl.Float64
        for t in out.schema.values()
        if t not in (pl.String,) and t != bars.schema["ts"]
    )
    # past each feature's warm-up every value exists (vwap_z is null on session opens only)
    late = out.filter(pl.int_range(pl.len()).over("symbol") >= fs.warmup("5Min"))
    assert late.height > 0
    nulls = {c: n for c, n in late.null_count().row(0, named=True).items() if n}
    assert set(nulls) <= {"vwap_z"}


def test_struct_indicators_expand_and_specs_can_read_earlier_aliases(bars):
    specs = [
        FeatureSpec(name="macd", alias="m"),
        FeatureSpec(name="bollinger", params={"window": 10}),
        FeatureSpec(name="cs_rank", params={"column": "m_hist", "periods": 0}, alias="hist_rank"),
    ]
    out = build_features(bars, specs)
    assert out.columns[2:] == [
        "m_macd",
        "m_signal",
        "m_hist",
        "bollinger_10_lower",
        "bollinger_10_middle",
        "bollinger_10_upper",
        "bollinger_10_pct_b",
        "hist_rank",
    ]
    ranked = (
        out.drop_nulls("m_hist")
        .group_by("ts")
        .agg(pl.corr("hist_rank", "m_hist", method="spearman").alias("rho"))
    )
    np.testing.assert_allclose(ranked["rho"].to_numpy(), 1.0)


def test_build_does_not_mutate_and_sorts_unsorted_input(bars):
    shuffled = bars.sample(fraction=1.0, shuffle=True, seed=3)
    before = shuffled.clone()
    a = build_features(shuffled, "intraday_mean_reversion")
    assert shuffled.equals(before)
    assert a.equals(build_features(bars, "intraday_mean_reversion"))


def test_definition_hash_tracks_parameters_not_spelling(cfg):
    a = resolve_feature_set([FeatureSpec(name="rsi")])
    b = resolve_feature_set([{"name": "rsi", "params": {"window": 14}, "alias": "rsi"}])
    c = resolve_feature_set([FeatureSpec(name="rsi", params={"window": 15}, alias="rsi")])
    assert a.hash == b.hash != c.hash
    k_int = resolve_feature_set([{"name": "bollinger", "params": {"k": 2}, "alias": "b"}])
    k_float = resolve_feature_set([{"name": "bollinger", "params": {"k": 2.0}, "alias": "b"}])
    assert k_int.hash == k_float.hash
    assert resolve_feature_set("swing_trend_following", cfg).hash != a.hash


@pytest.mark.parametrize(
    ("specs", "error", "match"),
    [
        ([{"name": "rsii"}], ConfigError, r"unknown feature 'rsii' \(did you mean 'rsi'\?\)"),
        (
            [{"name": "rsi", "params": {"windw": 3}}],
            ConfigError,
            r"no parameter 'windw' \(did you mean 'window'\?\)",
        ),
        (
            [{"name": "rsi", "params": {"window": 0}}],
            ConfigError,
            "'window' parameter of rsi must be an int >= 2. Got 0",
        ),
        ([{"name": "rsi"}, {"name": "ema", "alias": "rsi"}], ConfigError, "produced twice"),
        ([{"name": "ema", "alias": "close"}], ConfigError, "shadows a bar column"),
        ([], ConfigError, "is empty"),
    ],
)
def test_bad_feature_sets_are_rejected_with_the_fix(specs, error, match):
    with pytest.raises(error, match=match):
        resolve_feature_set(specs)


def test_unknown_set_name_and_missing_columns(bars, cfg):
    with pytest.raises(ConfigError, match="did you mean 'intraday_mean_reversion'"):
        resolve_feature_set("intraday_mean_reversal", cfg)
    with pytest.raises(SchemaError, match="needs column 'volume'"):
        build_features(bars.drop("volume"), [FeatureSpec(name="volume_zscore")])
    with pytest.raises(SchemaError, match="not unique"):
        build_features(pl.concat([bars, bars.head(1)]), [FeatureSpec(name="rsi")])


def test_registry_entries_document_formula_and_warmup():
    for name in feature_names():
        d = get_feature(name)
        assert d.factory.__doc__ and "Warm-up" in d.factory.__doc__, name
        assert d.warmup_bars() >= 0


# --------------------------------------------------------------------------------------------
# live engine


@pytest.mark.parametrize("name", CONFIGURED)
def test_live_engine_bar_by_bar_and_batches_equal_batch(bars, cfg, name, long_bars):
    bars = _enough(name, cfg, bars, long_bars)
    batch = build_features(bars, name, cfg)
    engine = FeatureEngine(name, cfg, timeframe="5Min")
    ts = bars.get_column("ts").unique().sort()
    warm_end = ts[engine.history + 40]
    outputs = [engine.update(bars.filter(pl.col("ts") <= warm_end))]
    rest = ts.filter(ts > warm_end)
    one_by_one, batched = rest[:60], rest[60:]
    for t in one_by_one:  # one bar per symbol per update
        outputs.append(engine.update(bars.filter(pl.col("ts") == t)))
    for chunk in range(0, len(batched), 25):  # small batches
        window = batched[chunk : chunk + 25]
        outputs.append(engine.update(bars.filter(pl.col("ts").is_in(window.implode()))))
    live = pl.concat(outputs).sort("symbol", "ts")
    _close(live, batch, rtol=1e-9)
    assert engine.tail.group_by("symbol").len()["len"].max() == engine.history


def test_engine_tail_is_bounded_and_rejects_stale_bars(bars):
    engine = FeatureEngine([FeatureSpec(name="rsi")], timeframe="5Min")
    assert engine.history == get_feature("rsi").warmup_bars() + 1
    engine.update(bars.head(500))
    with pytest.raises(SchemaError, match="not after the last bar"):
        engine.update(bars.slice(499, 1))
    with pytest.raises(ConfigError, match="'history' parameter of FeatureEngine must be an int >="):
        FeatureEngine([FeatureSpec(name="rsi")], history=10)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), split=st.integers(1, 400), step=st.integers(1, 40))
def test_property_engine_equals_batch_for_any_split(bar_factory, seed, split, step):
    """Any first batch, then chunks of any size: the bounded tail reproduces batch values."""
    bars = bar_factory(n_symbols=2, n_days=6, seed=seed)  # 468 bars per symbol
    specs = [FeatureSpec(name="zscore"), FeatureSpec(name="spread"), FeatureSpec(name="ema_slope")]
    engine = FeatureEngine(specs)
    assert engine.history < 468 - 60  # the tail really is cut
    ts = bars.get_column("ts").unique().sort()
    outs = [engine.update(bars.filter(pl.col("ts") <= ts[split]))]
    rest = ts.filter(ts > ts[split])
    for i in range(0, len(rest), step * 5):
        part = rest[i : i + step * 5]
        outs.append(engine.update(bars.filter(pl.col("ts").is_in(part.implode()))))
    _close(pl.concat(outs).sort("symbol", "ts"), build_features(bars, specs), rtol=1e-9)
