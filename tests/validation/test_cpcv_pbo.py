"""PBO of a search from CPCV paths: composition, behaviour on planted and null signals, errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from workbench.errors import ParameterError
from workbench.models.estimator import LGBMForecaster
from workbench.validation.cpcv import cpcv_pbo
from workbench.validation.cv import CombinatorialPurgedKFold, PurgedKFold
from workbench.validation.overfitting import pbo_from_cpcv

from ..models.conftest import FEATURES, make_table

GOOD = {"num_boost_round": 40, "num_leaves": 4, "min_child_samples": 50, "learning_rate": 0.1}
USELESS = {"num_boost_round": 1, "num_leaves": 2, "min_child_samples": 5000}  # no split fits


def sign_pnl(table: pl.DataFrame) -> object:
    """Per-bar returns of holding sign(prediction) of every symbol, equal weight, no costs."""
    labels = table.select("symbol", "ts", "label")

    def fn(preds: pl.DataFrame) -> np.ndarray:
        pnl = preds.join(labels, on=["symbol", "ts"]).with_columns(
            r=pl.col("prediction").sign() * pl.col("label")
        )
        return pnl.group_by("ts").agg(pl.col("r").mean()).sort("ts")["r"].to_numpy()

    return fn


@pytest.fixture(scope="module")
def planted() -> pl.DataFrame:
    return make_table(n_ts=400, seed=3).sort("ts", "symbol")


def test_matches_a_hand_assembled_cpcv(planted: pl.DataFrame) -> None:
    configs = [GOOD, {**GOOD, "num_leaves": 2}, USELESS]
    cv = CombinatorialPurgedKFold(4, 2, embargo=2)
    fn = sign_pnl(planted)
    res = cpcv_pbo(planted, FEATURES, configs=configs, splitter=cv, returns_fn=fn, n_splits=4,
                   progress=False)  # fmt: skip
    x, y = planted.select(FEATURES).to_numpy(), planted["label"].to_numpy()
    mats: list[list[np.ndarray]] = [[] for _ in range(cv.n_paths)]
    for cfg in configs:
        preds = [
            LGBMForecaster(**cfg).fit(x[tr], y[tr]).predict(x[te]) for tr, te in cv.split(planted)
        ]
        for p, row in enumerate(cv.stitch_paths(planted, preds)):
            mats[p].append(fn(planted.select("symbol", "ts").with_columns(prediction=row)))
    want = pbo_from_cpcv([np.column_stack(m) for m in mats], 4)
    assert res.pbo.pbo == want.pbo
    np.testing.assert_allclose(res.pbo.logits, want.logits)
    assert res.path_sharpes.shape == (cv.n_paths, 3)
    m0 = np.column_stack(mats[0])
    assert res.path_sharpes[0, 0] == pytest.approx(m0[:, 0].mean() / m0[:, 0].std(ddof=1))
    assert res.configs == configs and set(res.figures) == {"logits", "is_vs_oos"}


def test_a_real_edge_is_not_overfit(planted: pl.DataFrame) -> None:
    # the model that learns the planted signal beats the one that cannot, in and out of sample
    res = cpcv_pbo(planted, FEATURES, configs=[USELESS, GOOD, {**USELESS, "num_boost_round": 2}],
                   splitter=CombinatorialPurgedKFold(6, 2, embargo=2), returns_fn=sign_pnl(planted),
                   n_splits=4, progress=False)  # fmt: skip
    assert res.pbo.pbo < 0.1
    assert (res.path_sharpes[:, 1] > 0.1).all()
    assert res.pbo.prob_oos_loss == 0.0


def test_choosing_among_noise_is_overfit() -> None:
    noise = make_table(n_ts=400, seed=4).sort("ts", "symbol")
    noise = noise.with_columns(
        label=pl.Series(np.random.default_rng(0).normal(scale=0.01, size=noise.height))
    )
    configs = [{**GOOD, "feature_fraction": 0.5, "seed": s} for s in range(8)]
    res = cpcv_pbo(noise, FEATURES, configs=configs, splitter=CombinatorialPurgedKFold(6, 2, embargo=2),
                   returns_fn=sign_pnl(noise), n_splits=4, progress=False)  # fmt: skip
    assert 0.25 < res.pbo.pbo < 0.9  # selection on noise: a coin flip or worse
    assert abs(res.path_sharpes.mean()) < 3 / np.sqrt(400)  # within 3 standard errors of 0


def test_correlation_of_trial_returns(planted: pl.DataFrame) -> None:
    same = cpcv_pbo(planted, FEATURES, configs=[GOOD, dict(GOOD)], splitter=CombinatorialPurgedKFold(4, 2),
                    returns_fn=sign_pnl(planted), n_splits=4, progress=False)  # fmt: skip
    assert same.correlation == pytest.approx(1.0)
    cv = CombinatorialPurgedKFold(4, 2)
    calls = iter(range(100))  # config after config, path after path: the second one stays flat

    def second_flat(p: pl.DataFrame) -> np.ndarray:
        r = sign_pnl(planted)(p)
        return r if next(calls) < cv.n_paths else np.zeros_like(r)

    flat = cpcv_pbo(planted, FEATURES, configs=[GOOD, USELESS], splitter=cv, returns_fn=second_flat,
                    n_splits=4, progress=False)  # fmt: skip
    assert flat.correlation == 0.0  # a configuration that never trades correlates with nothing


def test_errors(planted: pl.DataFrame) -> None:
    fn = sign_pnl(planted)
    kw = {"returns_fn": fn, "n_splits": 4, "progress": False}
    with pytest.raises(ParameterError, match="at least 2 configurations.*Got 1"):
        cpcv_pbo(planted, FEATURES, configs=[GOOD], splitter=CombinatorialPurgedKFold(4, 2), **kw)
    with pytest.raises(ParameterError, match="must be a CombinatorialPurgedKFold.*PurgedKFold"):
        cpcv_pbo(planted, FEATURES, configs=[GOOD, GOOD], splitter=PurgedKFold(4), **kw)  # type: ignore[arg-type]
    with pytest.raises(
        ParameterError, match=r"'configs\[1\]'.*'num_leafs'.*Did you mean 'num_leaves'"
    ):
        cpcv_pbo(planted, FEATURES, configs=[GOOD, {"num_leafs": 3}],
                 splitter=CombinatorialPurgedKFold(4, 2), **kw)  # fmt: skip
    calls = iter(range(100))
    with pytest.raises(ParameterError, match="lengths .* on path 0.*same window"):
        cpcv_pbo(planted, FEATURES, configs=[GOOD, USELESS], splitter=CombinatorialPurgedKFold(4, 2),
                 returns_fn=lambda p: np.zeros(10 + next(calls)), n_splits=4, progress=False)  # fmt: skip
    with pytest.raises(ParameterError, match="non-finite value.*return 0 for bars"):
        cpcv_pbo(planted, FEATURES, configs=[GOOD, USELESS], splitter=CombinatorialPurgedKFold(4, 2),
                 returns_fn=lambda p: np.full(50, np.nan), n_splits=4, progress=False)  # fmt: skip


def test_splits_fitted_in_threads_give_the_same_result(planted: pl.DataFrame) -> None:
    configs = [GOOD, {**GOOD, "num_leaves": 2, "min_child_samples": 20}, USELESS]
    kw = {"configs": configs, "returns_fn": sign_pnl(planted), "n_splits": 4, "progress": False}
    cv = CombinatorialPurgedKFold(6, 2, embargo=2)
    serial = cpcv_pbo(planted, FEATURES, splitter=cv, **kw)
    threads = cpcv_pbo(planted, FEATURES, splitter=cv, jobs=2, **kw)
    np.testing.assert_array_equal(threads.path_sharpes, serial.path_sharpes)
    np.testing.assert_array_equal(threads.pbo.logits, serial.pbo.logits)
    assert threads.pbo.pbo == serial.pbo.pbo and threads.correlation == serial.correlation
    with pytest.raises(ParameterError, match="'jobs' parameter of cpcv_pbo must be an int >= 1"):
        cpcv_pbo(planted, FEATURES, splitter=cv, jobs=0, **kw)
