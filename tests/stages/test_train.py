"""Train stage: search on the purged training window, refit, PBO, resumable and idempotent."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pytest

from workbench.config import load_config
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.store import BarStore
from workbench.data.timeframe import Timeframe
from workbench.errors import ConfigError, ParameterError
from workbench.models.search import refit
from workbench.stages.features import run_features
from workbench.stages.train import run_train

REPO = Path(__file__).resolve().parents[2]
SYMBOLS = ["SYN000", "SYN001"]


@pytest.fixture
def data(isolated: Path) -> tuple[Path, Path]:
    bars = SyntheticSource(seed=5, alpha=0.25).fetch(
        SYMBOLS, Timeframe.parse("5Min"), datetime(2024, 1, 2, tzinfo=UTC),
        datetime(2024, 2, 16, tzinfo=UTC),
    )  # fmt: skip
    store = isolated / "bars"
    BarStore(store).write(bars, "5Min")
    cfg = load_config(REPO)
    res = run_features(cfg, store_root=str(store), symbols=SYMBOLS, timeframe="5Min",
                       start="2024-01-02", end="2024-02-15", strategy="intraday_reversal",
                       out_dir=isolated)  # fmt: skip
    return res.path, store


def _train(data: tuple[Path, Path], tmp: Path, **kw: object) -> object:
    features_path, store = data
    args = {"n_trials": 4, "n_folds": 3, "pbo_configs": 3, "seed": 3, "progress": False,
            "storage": f"sqlite:///{tmp / 'optuna.db'}", **kw}  # fmt: skip
    with mlflow.start_run():
        return run_train(load_config(REPO), features_path=features_path, store_root=store,
                         strategy="intraday_reversal", timeframe="5Min", **args)  # fmt: skip


def test_search_refit_and_pbo_on_the_training_window(
    data: tuple[Path, Path], isolated: Path
) -> None:
    res = _train(data, isolated)
    split = res.split
    # nothing from the validation period reaches training: every training label ends before it
    assert (split.train["t1"] < split.split_ts).all() and (
        split.valid["ts"] >= split.split_ts
    ).all()
    assert res.metrics["search_trials"] == 4 == res.search.n_trials + res.search.n_pruned
    # the refit model is the best trial's configuration fitted on the whole training window
    again = refit(res.search.best_params, split.train.sort("ts", "symbol"), res.features)
    x = split.valid.select(res.features)
    np.testing.assert_array_equal(res.model.predict(x), again.predict(x))
    # trial Sharpe ratios: the mean fold Sharpe of each completed trial, per bar
    done = [t for t in res.search.study.trials if t.state.name == "COMPLETE"]
    assert res.trial_sharpes == pytest.approx([np.mean(t.user_attrs["fold_scores"]) for t in done])
    assert res.search.score == "sharpe" and all(abs(s) < 1 for s in res.trial_sharpes)
    # PBO from CPCV over the best configurations
    assert res.cpcv is not None and res.cpcv.configs == res.search.top_params(3)
    assert 0 <= res.cpcv.pbo.pbo <= 1 and res.cpcv.path_sharpes.shape == (
        5,
        len(res.cpcv.configs),
    )
    # among distinct candidates only: near-duplicates count once, too few is "not measurable"
    assert res.metrics["pbo_distinct"] == res.cpcv.n_distinct == len(res.cpcv.representatives)
    assert math.isnan(res.metrics["pbo"]) == (res.cpcv.n_distinct < 3)  # gates.pbo_min_distinct
    if res.cpcv.n_distinct >= 3:
        assert res.metrics["pbo"] == res.cpcv.pbo.pbo
    assert res.metrics["effective_trials"] <= 4
    assert res.metrics["ic_valid"] > 0.1  # the planted edge is found out of sample


def test_rerun_resumes_the_study_and_is_idempotent(data: tuple[Path, Path], isolated: Path) -> None:
    first = _train(data, isolated)
    second = _train(data, isolated)
    assert second.study_name == first.study_name and second.search.n_new == 0
    assert second.search.best_params == first.search.best_params
    same = {k: v for k, v in first.metrics.items() if not math.isnan(v)}
    assert {k: second.metrics[k] for k in same} == same
    more = _train(data, isolated, n_trials=6)  # a bigger budget extends the same study
    assert more.study_name == first.study_name and more.search.n_new == 2
    other = _train(data, isolated, seed=4)  # another seed is another study
    assert other.study_name != first.study_name


def test_bad_arguments_name_the_fix(data: tuple[Path, Path], isolated: Path) -> None:
    with pytest.raises(ParameterError, match="'n_trials'.*>= 0.*Got -1"):
        _train(data, isolated, n_trials=-1)


def test_search_settings_are_validated(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WB_STRATEGIES__INTRADAY_REVERSAL__SEARCH__CPCV_TEST_GROUPS", "6")
    with pytest.raises(ConfigError, match="cpcv_test_groups"):
        load_config(REPO)
    monkeypatch.delenv("WB_STRATEGIES__INTRADAY_REVERSAL__SEARCH__CPCV_TEST_GROUPS")
    monkeypatch.setenv("WB_STRATEGIES__INTRADAY_REVERSAL__SEARCH__SCORE", "auc")
    with pytest.raises(ConfigError, match="score"):
        load_config(REPO)


def test_a_sector_cap_is_searched_with_the_sectors_validation_and_sessions_use(
    data: tuple[Path, Path], isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The train step's fold backtests apply a strategy's sector cap with the simulator's sectors
    (the ones validation and the session use): before, they had none and the search failed."""
    from workbench.risk import RiskPolicy

    cfg = load_config(REPO)
    strat = cfg.strategies["intraday_reversal"]
    limits = strat.risk.limits.model_copy(update={"sector_cap": 0.5})
    capped = strat.model_copy(update={"risk": strat.risk.model_copy(update={"limits": limits})})
    cfg = cfg.model_copy(update={"strategies": {**cfg.strategies, "intraday_reversal": capped}})
    seen: list[dict | None] = []
    real = RiskPolicy.from_config.__func__

    def spy(cls, *a, **kw):
        seen.append(kw.get("sectors"))
        return real(cls, *a, **kw)

    monkeypatch.setattr(RiskPolicy, "from_config", classmethod(spy))
    features_path, store = data
    with mlflow.start_run():
        res = run_train(cfg, features_path=features_path, store_root=store,
                        strategy="intraday_reversal", timeframe="5Min", n_trials=2, n_folds=2,
                        pbo_configs=0, seed=3, progress=False,
                        storage=f"sqlite:///{isolated / 'optuna.db'}")  # fmt: skip
    assert res.search.n_trials == 2
    from workbench.validation.evaluate import default_sectors

    assert seen and seen[0] == default_sectors(cfg, SYMBOLS) and set(seen[0]) == set(SYMBOLS)
