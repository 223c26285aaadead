"""Features fanned out over symbols on a LocalCluster (2 worker processes) equal the in-process
build_features exactly, cross-sectional features (and features reading them) included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from workbench.config import FeatureSpec
from workbench.features import build_features
from workbench.features.distributed import build_features_on_dask, split_by_symbol
from workbench.features.sets import resolve_feature_set

SPECS = [
    FeatureSpec(name="returns", params={"periods": 3}, alias="ret_3"),
    FeatureSpec(name="rsi", params={"window": 14}, alias="rsi_14"),
    FeatureSpec(name="zscore", params={"window": 20}, alias="zscore_20"),
    FeatureSpec(name="volume_zscore", params={"window": 78}, alias="volume_z_78"),
    FeatureSpec(name="time_of_day", alias="time_of_day"),
    FeatureSpec(name="cs_rank", params={"column": "rsi_14", "periods": 0}, alias="rsi_rank"),
    FeatureSpec(name="zscore", params={"column": "rsi_rank", "window": 10}, alias="rank_z"),
    FeatureSpec(name="session_vwap", alias="vwap_s"),
]


@pytest.fixture(scope="module")
def client(dask_client: Any) -> Any:
    return dask_client


def test_per_symbol_and_cross_sectional_features_are_told_apart(
    bar_factory: Callable[..., pl.DataFrame],
) -> None:
    bars = bar_factory(n_symbols=2, n_days=1)
    per_symbol, rest = split_by_symbol(resolve_feature_set(SPECS), bars.columns)
    assert [f.alias for f in per_symbol] == [
        "ret_3",
        "rsi_14",
        "zscore_20",
        "volume_z_78",
        "time_of_day",
        "vwap_s",
    ]
    assert [f.alias for f in rest] == ["rsi_rank", "rank_z"]  # rank_z reads the rank


@pytest.mark.parametrize("partitions", [None, 3, 50])
def test_dask_features_equal_the_in_process_frame_exactly(
    bar_factory: Callable[..., pl.DataFrame], client: Any, partitions: int | None
) -> None:
    bars = bar_factory(n_symbols=7, n_days=3, seed=4).sample(fraction=1.0, shuffle=True, seed=1)
    want = build_features(bars, SPECS)
    got = build_features_on_dask(bars, SPECS, client=client, partitions=partitions)
    assert_frame_equal(got, want, check_exact=True)
    assert got["rsi_rank"].null_count() < got.height  # the cross-section was really computed


def test_only_per_symbol_features_and_a_single_symbol(
    bar_factory: Callable[..., pl.DataFrame], client: Any
) -> None:
    bars = bar_factory(n_symbols=3, n_days=2)
    specs = SPECS[:3]
    assert_frame_equal(
        build_features_on_dask(bars, specs, client=client),
        build_features(bars, specs),
        check_exact=True,
    )
    one = bars.filter(pl.col("symbol") == "SYM01")
    assert_frame_equal(
        build_features_on_dask(one, specs, client=client),
        build_features(one, specs),
        check_exact=True,
    )
