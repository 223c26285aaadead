"""Promotion stands on its own: the evaluation is rebuilt from MLflow and the bar store (no run
folder, no feature cache), judged by a paired test and the challenger's deflated Sharpe ratio,
refused by name when the store lost the window; demote rolls back to the previous champion."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from typer.testing import CliRunner

from workbench import tracking
from workbench.config import load_config
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.store import BarStore
from workbench.models.estimator import LGBMForecaster
from workbench.models.lgbm import chronological_split
from workbench.models.lifecycle import GATE_RUN_TAG, GATE_TAG, WINDOW_ARTIFACT
from workbench.models.promotion import (
    LINEAGE_TAG,
    PromotionError,
    _Comparison,
    _judge,
    demote,
    paired_test,
    promote,
    session_test,
)
from workbench.models.registry import CHALLENGER, CHAMPION, ModelRef, log_lightgbm, set_alias
from workbench.stages.features import run_features
from workbench.stages.validate import apply_gates, run_validate
from workbench.tracking import start_stage
from workbench.validation.evaluate import feature_columns

REPO = Path(__file__).resolve().parents[2]
STRAT = "intraday_reversal"
SYMBOLS = ["SYN000", "SYN001"]
PARAMS = {"num_boost_round": 60, "learning_rate": 0.05, "num_leaves": 4,
          "min_child_samples": 200, "seed": 3}  # fmt: skip


def _validate(cfg, parent: str, ref: ModelRef, features_path: Path, store: Path, split: str):
    stage = start_stage("validate", {"model_version": ref.version}, parent_run_id=parent, cfg=cfg)
    res = run_validate(cfg, features_path=features_path, store_root=str(store), model=ref,
                       split_ts=split, strategy=STRAT, timeframe="5Min", pbo=0.1)  # fmt: skip
    msg = apply_gates(res, ref, features_path=str(features_path), store_root=str(store),
                      split_ts=split, timeframe="5Min", strategy=STRAT, cfg=cfg)  # fmt: skip
    stage.finish()
    return res, msg, stage.run_id


def _pinned_config(tmp: Path) -> Path:
    """The project's config with the strategy's decision pinned to fixed thresholds (the models
    here are registered by hand, without a search to choose them)."""
    import yaml

    out = tmp / "config"
    shutil.copytree(REPO / "config", out)
    path = out / "strategies" / f"{STRAT}.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["decision"] = {"method": "threshold", "long": 0.0003, "short": -0.0003}
    path.write_text(yaml.safe_dump(spec))
    return out


def _features(cfg, store: Path, out: Path):
    return run_features(cfg, store_root=str(store), symbols=SYMBOLS, timeframe="5Min",
                        start="2024-01-02", end="2024-02-15", strategy=STRAT, out_dir=out)  # fmt: skip


def _register(table: pl.DataFrame, split: str, labels: np.ndarray | None = None) -> ModelRef:
    feats = feature_columns(table)
    y = table["label"].to_numpy() if labels is None else labels
    model = LGBMForecaster(**PARAMS).fit(table.select(feats), y)
    with mlflow.start_run(run_name="train"):
        return log_lightgbm(model, table.select(feats).to_pandas(), registered_name=STRAT,
                            tags={"split_ts": split})  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A research run in a project folder: the store inside it, features as the pipeline's
    features step, a noise model set champion by hand, a planted-edge model and its twin
    validated (both pass the gates)."""
    tmp = tmp_path_factory.mktemp("promotion")
    root = tmp / "project"
    mp = pytest.MonkeyPatch()
    for k in list(os.environ):
        if k.startswith("WB_") or k == "MLFLOW_TRACKING_URI":
            mp.delenv(k)
    for k, v in {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "WB_MLFLOW__ARTIFACT_ROOT": str(tmp / "mlartifacts"),
        "WB_CONFIG_DIR": str(_pinned_config(tmp)),
        "WB_STORE__FEATURES_ROOT": str(root / "data" / "features"),
        # light costs: six weeks of the planted edge clear every gate of the strategy
        "WB_BACKTEST__COSTS__HALF_SPREAD_BPS": "0.5",
        "WB_BACKTEST__COSTS__COMMISSION_BPS": "0",
    }.items():
        mp.setenv(k, v)
    before = mlflow.get_tracking_uri()
    (root / "data").mkdir(parents=True)
    cfg = load_config(root)
    store = root / "data" / "sim"
    bars = SyntheticSource(seed=5, alpha=0.25).fetch(
        SYMBOLS, "5Min", datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 2, 16, tzinfo=UTC)
    )
    BarStore(store).write(bars, "5Min")
    tracking.setup(cfg)
    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    parent = client.create_run(exp.experiment_id, run_name="research").info.run_id
    window = {"store_root": str(store), "symbols": SYMBOLS, "timeframe": "5Min",
              "start": "2024-01-02", "end": "2024-02-15", "strategy": STRAT}  # fmt: skip
    stage = start_stage("features", window, parent_run_id=parent, cfg=cfg)
    (root / "runs" / "features").mkdir(parents=True)
    fres = _features(cfg, store, root / "runs" / "features")
    stage.finish()
    table = fres.table
    sp = chronological_split(table.drop_nulls("label"), train_frac=0.6)
    split = sp.split_ts.isoformat()
    train = sp.train.sort("ts", "symbol")
    noise_labels = np.random.default_rng(0).permutation(train["label"].to_numpy())
    noise = _register(train, split, noise_labels)
    set_alias(STRAT, CHAMPION, noise.version)  # a researcher moved the alias by hand
    good = _register(train, split)
    with pytest.raises(PromotionError) as nothing:  # no challenger yet
        promote(cfg, STRAT)
    good_res, good_msg, good_run = _validate(cfg, parent, good, fres.path, store, split)
    twin = _register(train, split)  # the same model again: identical predictions
    yield {
        "cfg": cfg, "root": root, "store": store, "features_path": fres.path, "split": split,
        "noise": noise, "good": good, "twin": twin, "good_res": good_res, "good_msg": good_msg,
        "good_run": good_run, "parent": parent, "tmp": tmp, "nothing": str(nothing.value),
    }  # fmt: skip
    mp.undo()
    mlflow.set_tracking_uri(before)


def test_validation_records_a_portable_window(project: dict) -> None:
    assert "is now 'challenger'" in project["good_msg"], (
        project["good_msg"], project["good_res"].gates.frame)  # fmt: skip
    assert "note:" not in project["good_msg"]
    good = project["good"]
    mv = mlflow.MlflowClient().get_model_version(STRAT, good.version)
    assert mv.tags[GATE_TAG] == "pass" and mv.tags[GATE_RUN_TAG] == project["good_run"]
    assert not any(k in mv.tags for k in ("oos.features_path", "oos.store_root"))
    window = mlflow.artifacts.load_dict(f"runs:/{project['good_run']}/{WINDOW_ARTIFACT}")
    assert window["store"] == "data/sim"  # relative to the project: no absolute path recorded
    assert str(project["root"]) not in json.dumps(window) and str(project["tmp"]) not in json.dumps(
        dict(mv.tags)
    )
    assert (window["start"], window["end"], window["symbols"]) == (
        "2024-01-02",
        "2024-02-15",
        SYMBOLS,
    )
    train = pl.read_parquet(project["features_path"]).filter(
        pl.col("ts") < datetime.fromisoformat(project["split"])
    )
    assert mv.tags["workbench.train_end"] == train["ts"].max().isoformat()


def test_promote_rebuilds_the_evaluation_from_the_store_alone(project: dict) -> None:
    cfg, root = project["cfg"], project["root"]
    shutil.rmtree(root / "runs")  # the feature table and every run folder
    shutil.rmtree(root / "data" / "features")  # the feature cache
    res = promote(cfg, STRAT)
    good, noise = project["good"], project["noise"]
    # the same number the validation computed from the feature file, rebuilt from the bars
    assert res.challenger_sharpe == pytest.approx(project["good_res"].metrics["sharpe"], rel=1e-9)
    assert res.deflated_sharpe == pytest.approx(
        project["good_res"].metrics["deflated_sharpe"], rel=1e-9
    )
    assert res.promoted, res.reason
    assert res.window_test is not None and res.window_test.p_value <= 0.05
    assert res.window_test.mean_diff > 0 and "one-sided p" in res.reason
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(STRAT, CHAMPION).version) == good.version
    # the hand-set champion is kept in the lineage, so a rollback returns to it
    assert json.loads(client.get_registered_model(STRAT).tags[LINEAGE_TAG]) == [
        noise.version, good.version,
    ]  # fmt: skip
    run = client.get_run(res.run_id)
    assert run.data.tags["action"] == "promote" and run.data.metrics["paired_p"] <= 0.05
    arts = {a.path for a in client.list_artifacts(res.run_id, "figures")}
    assert arts == {"figures/promotion_window.html"}
    assert (root / "data" / "features").exists()  # the rebuild refilled the cache


def test_identical_challenger_is_not_promoted(project: dict) -> None:
    cfg, twin, good = project["cfg"], project["twin"], project["good"]
    out = project["tmp"] / "features-again"  # the run folder is gone: the feature file again
    out.mkdir()
    path = _features(cfg, project["store"], out).path
    _, msg, _ = _validate(cfg, project["parent"], twin, path, project["store"], project["split"])
    assert "is now 'challenger'" in msg
    client = mlflow.MlflowClient()
    before = str(client.get_model_version_by_alias(STRAT, CHAMPION).version)
    assert before == good.version
    res = promote(cfg, STRAT)
    assert not res.promoted
    assert res.window_test.mean_diff == 0.0 and res.window_test.p_value == 1.0
    assert res.challenger_sharpe == res.champion_sharpe
    assert str(client.get_model_version_by_alias(STRAT, CHAMPION).version) == before
    decision = json.loads(client.get_registered_model(STRAT).tags["last_promotion_decision"])
    assert decision["promoted"] is False and decision["challenger"] == twin.version


def test_recorded_shadow_sessions_are_paired_and_can_be_required(project: dict) -> None:
    from workbench.models.promotion import shadow_pairs

    cfg, twin, good = project["cfg"], project["twin"], project["good"]
    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    returns = {  # (date, role, version) -> session return; one challenger date has no pair
        ("2024-02-12", "champion", good.version): 0.001,
        ("2024-02-12", "challenger", twin.version): 0.003,
        ("2024-02-13", "champion", good.version): -0.002,
        ("2024-02-13", "challenger", twin.version): 0.0,
        ("2024-02-14", "challenger", twin.version): 0.01,
        ("2024-02-14", "champion", "99"): 0.5,  # another version: not this pair
    }
    for (day, role, version), r in returns.items():
        run = client.create_run(exp, tags={"report": "shadow", "model_name": STRAT,
                                           "session_date": day, "shadow_role": role,
                                           "model_version": version})  # fmt: skip
        client.log_metric(run.info.run_id, "session_return", r)
        client.set_terminated(run.info.run_id)
    pairs = shadow_pairs(STRAT, good.version, twin.version)
    assert pairs == [(0.001, 0.003), (-0.002, 0.0)]
    strict = cfg.model_copy(update={"models": cfg.models.model_copy(update={
        "promotion": cfg.models.promotion.model_copy(update={"min_shadow_sessions": 3})})})  # fmt: skip
    res = promote(strict, STRAT)
    assert not res.promoted and res.shadow_test is not None and res.shadow_test.n == 2
    assert "2 shadow session(s) < models.promotion.min_shadow_sessions 3" in res.reason


def test_a_champion_on_other_features_cannot_be_compared(project: dict) -> None:
    cfg, good = project["cfg"], project["good"]
    client = mlflow.MlflowClient()
    table = pl.read_parquet(project["tmp"] / "features-again" / "features.parquet")
    other = table.drop_nulls("label").with_columns(extra=pl.col("ret_1") * 2)
    odd = _register(other.head(3000), project["split"])
    set_alias(STRAT, CHAMPION, odd.version)
    try:
        with pytest.raises(
            PromotionError, match=f"champion {STRAT} v{odd.version} reads a feature"
        ):
            promote(cfg, STRAT)
    finally:
        set_alias(STRAT, CHAMPION, good.version)
    assert str(client.get_model_version_by_alias(STRAT, CHAMPION).version) == good.version


def test_demote_restores_the_previous_champion(project: dict) -> None:
    cfg, good, noise = project["cfg"], project["good"], project["noise"]
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(STRAT, CHAMPION).version) == good.version
    with pytest.raises(PromotionError, match="--reason"):
        demote(cfg, STRAT, reason=" ")
    res = demote(cfg, STRAT, reason="fills diverge from the backtest")
    assert (res.demoted, res.champion) == (good.version, noise.version)
    assert str(client.get_model_version_by_alias(STRAT, CHAMPION).version) == noise.version
    mv = client.get_model_version(STRAT, good.version)
    assert mv.tags["demotion_reason"] == "fills diverge from the backtest"
    run = client.get_run(res.run_id)
    assert run.data.tags["action"] == "demote"
    rec = mlflow.artifacts.load_dict(f"runs:/{res.run_id}/decision.json")
    assert rec["champion_before"] == good.version and rec["champion_after"] == noise.version
    with pytest.raises(PromotionError, match="no previous champion.*--to VERSION"):
        demote(cfg, STRAT, reason="again")
    # and through the CLI, back to the good one by version
    from workbench.cli import app

    out = CliRunner().invoke(app, ["demote", STRAT, "--reason", "back", "--to", good.version])
    assert out.exit_code == 0, out.output
    assert str(client.get_model_version_by_alias(STRAT, CHAMPION).version) == good.version


def test_promote_refuses_when_the_store_lost_the_window(project: dict) -> None:
    cfg, store = project["cfg"], project["store"]
    client = mlflow.MlflowClient()
    set_alias(STRAT, CHALLENGER, project["good"].version)
    set_alias(STRAT, CHAMPION, project["noise"].version)
    moved = store.with_name("sim-moved")
    store.rename(moved)
    try:
        with pytest.raises(PromotionError, match="no longer holds.*data/sim.*Fix: re-ingest"):
            promote(cfg, STRAT)
        # part of the window gone: the January partition of one symbol
        shutil.copytree(moved, store)
        jan = [p for p in store.rglob("*.parquet") if "SYN001" in str(p) and "2024-01" in str(p)]
        assert jan, sorted(store.rglob("*"))[:10]
        for p in jan:
            p.unlink()
        with pytest.raises(PromotionError, match="no longer holds") as exc:
            promote(cfg, STRAT)
        assert "--force" in str(exc.value)
        from workbench.cli import app

        out = CliRunner().invoke(app, ["promote", STRAT])
        assert out.exit_code == 2 and "no longer holds" in out.output
    finally:
        shutil.rmtree(store, ignore_errors=True)
        moved.rename(store)
    assert (
        str(client.get_model_version_by_alias(STRAT, CHAMPION).version) == project["noise"].version
    )


# ------------------------------------------------------------------------------ the tests


def _newey_west_t(d: np.ndarray, lags: int) -> float:
    """Hand-written Newey-West t statistic of the mean (Bartlett weights), the oracle."""
    n = len(d)
    e = d - d.mean()
    s = e @ e / n
    for k in range(1, lags + 1):
        s += 2 * (1 - k / (lags + 1)) * (e[k:] @ e[:-k]) / n
    return float(d.mean() / math.sqrt(s / n))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(30, 400),
    lags=st.integers(0, 8),
    shift=st.floats(-0.5, 0.5),
)
def test_paired_test_is_newey_west(seed: int, n: int, lags: int, shift: float) -> None:
    rng = np.random.default_rng(seed)
    b = rng.normal(size=n)
    a = b + shift + rng.normal(size=n)
    res = paired_test(a, b, lags=lags)
    t = _newey_west_t(a - b, lags)
    assert res.t == pytest.approx(t, rel=1e-9)
    assert res.p_value == pytest.approx(stats.norm.sf(t), rel=1e-9, abs=1e-15)
    if lags == 0:  # no lags: the paired t-test with the population variance
        scipy_t = stats.ttest_rel(a, b).statistic
        assert res.t == pytest.approx(scipy_t * math.sqrt(n / (n - 1)), rel=1e-9)


def test_paired_test_of_identical_returns_says_no() -> None:
    r = np.random.default_rng(1).normal(size=200)
    res = paired_test(r, r)
    assert (res.mean_diff, res.t, res.p_value) == (0.0, 0.0, 1.0)  # a tie is no evidence


def test_session_test_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    champ = rng.normal(0, 0.01, 12)
    chal = champ + rng.normal(0.002, 0.01, 12)
    res = session_test(list(zip(champ, chal, strict=True)))
    ref = stats.ttest_rel(chal, champ, alternative="greater")
    assert (res.t, res.p_value, res.n) == (
        pytest.approx(ref.statistic),
        pytest.approx(ref.pvalue),
        12,
    )


def _cmp(p: float, mean: float, dsr: float) -> _Comparison:
    from workbench.models.promotion import PairedTest

    return _Comparison(PairedTest(500, mean, 3.0, p, "hac(lags=5)"), 2.0, 1.0, dsr,
                       pl.DataFrame(), "2024-02-01 to 2024-02-15 (500 bars)")  # fmt: skip


@pytest.mark.parametrize(
    ("p", "mean", "dsr", "shadow", "min_shadow", "promoted", "why"),
    [
        (0.01, 1e-4, 0.99, None, 0, True, "<= alpha"),
        (0.20, 1e-4, 0.99, None, 0, False, "not <= alpha"),
        (0.01, 1e-4, 0.50, None, 0, False, "deflated Sharpe 0.500 < 0.95"),
        (0.01, 1e-4, 0.99, [(0.01, 0.02)] * 2, 3, False, "2 shadow session(s) < "),
        (0.01, 1e-4, 0.99, [(0.01, 0.02), (0.0, 0.005), (0.01, 0.012)], 3, True, "not behind"),
        (0.01, 1e-4, 0.99, [(0.02, 0.01), (0.01, 0.0), (0.0, 0.001)], 0, False, "behind"),
    ],
)
def test_judgement_needs_the_paired_test_the_deflated_sharpe_and_the_shadow_sessions(
    p, mean, dsr, shadow, min_shadow, promoted, why
) -> None:
    cfg = load_config(REPO)
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={
        "promotion": cfg.models.promotion.model_copy(update={"min_shadow_sessions": min_shadow})})})  # fmt: skip
    a, b = ModelRef(STRAT, "2", None, "", ""), ModelRef(STRAT, "1", None, "", "")
    ok, reason, _ = _judge(cfg, STRAT, a, b, _cmp(p, mean, dsr), shadow)
    assert ok is promoted and why in reason, reason


def test_promote_without_a_challenger_names_the_fix(project: dict) -> None:
    assert "nothing to promote" in project["nothing"] and "wb run research" in project["nothing"]
