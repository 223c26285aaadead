"""Out-of-sample evaluation of a model version: the one the validate stage, promotion and the
divergence report all call.

:func:`evaluate_model` backtests a model's predictions on the rows from ``split`` on, with the
configured costs and the strategy's risk policy, and measures them (backtest statistics, IC, PSR
and the deflated Sharpe ratio). :class:`EvaluationWindow` is what a passing validation records
about the data it judged (symbols, timeframe, the sessions the feature table was built from, the
split, the store relative to the project, fingerprints of the bars and of the table, the search's
trial Sharpe ratios); :func:`reproduce_window` rebuilds the feature table from the bar store alone
(no feature file, no cache needed) and refuses, naming what is missing, when the store no longer
holds those bars.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench.backtest import BacktestResult, run_backtest
from workbench.config import WorkbenchConfig
from workbench.data.store import BarStore, frame_fingerprint
from workbench.errors import WorkbenchError
from workbench.models.lgbm import predict
from workbench.risk import RiskPolicy
from workbench.validation.cv import WalkForward
from workbench.validation.overfitting import dsr_from_returns, effective_trials, psr_from_returns
from workbench.validation.walkforward import WalkForwardResult, walk_forward

NON_FEATURES = ("symbol", "ts", "label", "t1")


class WindowUnavailableError(WorkbenchError):
    """The bar store no longer holds (or no longer reproduces) a recorded evaluation window."""


def feature_columns(table: pl.DataFrame) -> list[str]:
    """Return the feature columns of a feature table (everything but keys and label columns)."""
    return [c for c in table.columns if c not in NON_FEATURES]


def ic(pred: pl.Series | np.ndarray, label: pl.Series | np.ndarray) -> float:
    """Return the Pearson information coefficient between predictions and realised labels."""
    a, b = np.asarray(pred, dtype=float), np.asarray(label, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


class FeatureMismatchError(WorkbenchError):
    """A model reads features the table does not have."""


def model_features(model: Any, table: pl.DataFrame) -> list[str]:
    """The columns ``model`` reads, in its order: its booster's feature names when they are
    named (a model trained on a frame), else the table's feature columns. Raises
    :class:`FeatureMismatchError` naming the ones ``table`` lacks."""
    booster = getattr(model, "booster_", model)
    names = list(booster.feature_name()) if hasattr(booster, "feature_name") else []
    if not names or all(n == f"Column_{i}" for i, n in enumerate(names)):
        return feature_columns(table)
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise FeatureMismatchError(
            f"the model reads {missing}, which the feature table lacks (it has "
            f"{feature_columns(table)}). Fix: evaluate it on a table of its own feature set."
        )
    return names


def sharpe_significance(
    returns: np.ndarray,
    trial_sharpes: Sequence[float] = (),
    n_trials: int = 0,
    trial_correlation: float = 0.0,
) -> dict[str, float]:
    """Return the PSR (vs 0) and the deflated Sharpe ratio of per-bar returns.

    ``trial_sharpes`` are per-bar Sharpe ratios of the configurations tried in the search that
    produced the model (the selected one included): their variance sets the bar. ``n_trials``
    is how many were tried (at least ``len(trial_sharpes)``; pruned trials count), and
    ``trial_correlation`` the average correlation of the trials' returns: the DSR corrects for
    ``effective_trials(n_trials, trial_correlation)`` independent trials (0: all independent).
    With fewer than two Sharpe ratios there is nothing to deflate for and the DSR equals the PSR
    against zero; the metric ``n_trials`` (the effective count) records which case applied.
    """
    r = np.asarray(returns, dtype=float)
    r = r[np.isfinite(r)]
    trials = [float(t) for t in trial_sharpes if np.isfinite(t)]
    count = effective_trials(max(n_trials, len(trials), 1), trial_correlation)
    out = {"psr": float("nan"), "deflated_sharpe": float("nan"), "n_trials": float(count)}
    if len(r) < 3 or r.std() == 0:
        return out  # nothing traded: no evidence either way, and the gates fail on NaN
    out["psr"] = float(psr_from_returns(r, 0.0))
    if len(trials) >= 2:
        out["deflated_sharpe"] = float(dsr_from_returns(r, trials, n_trials=count))
    else:
        out["deflated_sharpe"] = out["psr"]
    return out


def default_sectors(cfg: WorkbenchConfig, symbols: list[str]) -> dict[str, str]:
    """Sectors of the simulator's symbols (``sector<k>``); empty for other sources."""
    if cfg.data.source != "synthetic":
        return {}
    from workbench.data.sources.synthetic import SyntheticSource

    info = SyntheticSource.from_config(cfg).symbol_info(symbols)
    return {s: f"sector{k}" for s, k in info.select("symbol", "sector").iter_rows()}


def strategy_policy(
    cfg: WorkbenchConfig,
    strategy: str,
    timeframe: str,
    model: Any,
    table: pl.DataFrame,
    features: list[str],
    split: datetime,
    symbols: list[str],
    decision: Any = None,
) -> RiskPolicy:
    """The strategy's risk policy for this model: quantile thresholds (if any) from the model's
    predictions on its training rows (``ts < split``), sectors from the simulator by default;
    ``decision`` (a resolved DecisionPolicy, e.g. the thresholds the train step chose) wins."""
    strat = cfg.strategy(strategy)
    train_preds = None
    if strat.decision.method == "quantile":
        train = table.filter(pl.col("ts") < split)
        train_preds = predict(model, train, features)["prediction"].to_numpy()
    return RiskPolicy.from_config(
        cfg,
        strategy,
        timeframe=timeframe,
        train_predictions=train_preds,
        sectors=default_sectors(cfg, symbols) if strat.risk.limits.sector_cap else None,
        decision=decision,
    )


@dataclass
class Evaluation:
    """A model's out-of-sample predictions, their backtest and its measurements."""

    predictions: pl.DataFrame
    backtest: BacktestResult
    metrics: dict[str, float]
    policy: RiskPolicy
    bars: pl.DataFrame
    data_fingerprint: str

    @property
    def returns(self) -> np.ndarray:
        """Per-bar portfolio returns of the backtest (0 where flat)."""
        return np.nan_to_num(self.backtest.equity["returns"].to_numpy().astype(float))


def evaluate_model(
    cfg: WorkbenchConfig,
    model: Any,
    table: pl.DataFrame,
    bars: pl.DataFrame,
    *,
    split: datetime,
    strategy: str,
    timeframe: str,
    trial_sharpes: Sequence[float] = (),
    n_trials: int = 0,
    trial_correlation: float = 0.0,
    decision: Any = None,
) -> Evaluation:
    """Backtest ``model``'s predictions on the rows of ``table`` with ``ts >= split``.

    ``table`` is the whole feature table (the training rows set quantile thresholds); ``bars``
    holds at least the bars from ``split`` on (earlier ones are ignored). The backtest uses the
    configured costs and the strategy's risk policy; the metrics add the IC, the PSR and the
    deflated Sharpe ratio (corrected for the search described by ``trial_sharpes``,
    ``n_trials`` and ``trial_correlation``).
    """
    full = table.sort("ts", "symbol")
    oos = full.filter(pl.col("ts") >= split).sort("symbol", "ts")
    feats = model_features(model, oos)
    preds = predict(model, oos, feats).with_columns(label=oos["label"])
    symbols = sorted(oos["symbol"].unique().to_list())
    policy = strategy_policy(
        cfg, strategy, timeframe, model, full, feats, split, symbols, decision=decision
    )
    window = bars.filter(pl.col("ts") >= split)
    bt = run_backtest(
        window, preds.select("symbol", "ts", "prediction"), config=cfg.backtest, risk=policy
    )
    metrics = {k: float(v) for k, v in bt.stats.items() if isinstance(v, int | float)}
    metrics["ic"] = ic(preds["prediction"], preds["label"])
    metrics.update(
        sharpe_significance(
            bt.equity["returns"].to_numpy(), trial_sharpes, n_trials, trial_correlation
        )
    )
    fp = hashlib.sha256((frame_fingerprint(oos) + frame_fingerprint(window)).encode()).hexdigest()
    return Evaluation(preds, bt, metrics, policy, window, fp)


def walk_forward_evaluation(
    cfg: WorkbenchConfig,
    policy: RiskPolicy,
    table: pl.DataFrame,
    bars: pl.DataFrame,
    split: datetime,
    folds: int,
    seed: int,
    params: dict[str, Any],
    client: Any = None,
) -> WalkForwardResult:
    """Retrain the model (``params``) per window from ``split`` on, ``folds`` windows, costs on.

    With ``dask.executor: dask`` the windows are fitted on ``cfg.dask``'s cluster, one task per
    window (the same result as in-process); a ``client`` given is used as it is.
    """
    full = table.sort("ts", "symbol")
    n_train = full.filter(pl.col("ts") < split)["ts"].n_unique()
    n_test = full.filter(pl.col("ts") >= split)["ts"].n_unique()
    splitter = WalkForward(train_size=n_train, test_size=max(1, n_test // folds), embargo=1)

    def run(dask_client: Any) -> WalkForwardResult:
        return walk_forward(
            full,
            feature_columns(full),
            splitter=splitter,
            params=params,
            seed=seed,
            bars=bars,
            risk=policy,
            backtest=cfg.backtest,
            client=dask_client,
        )

    if client is not None or cfg.dask.executor != "dask":
        return run(client)
    from workbench.cluster import open_client

    with open_client(cfg.dask) as opened:
        return run(opened)


# ------------------------------------------------------------------------ recorded windows


@dataclass(frozen=True)
class EvaluationWindow:
    """What a passing validation judged, enough to rebuild it from the bar store.

    ``start`` and ``end`` are the sessions (``YYYY-MM-DD``, inclusive) the feature table was built
    from (warm-up included); ``store`` is the bar store root relative to the project root when it
    lies inside it (else as given); ``bars_fingerprint`` and ``table_fingerprint`` are
    :func:`~workbench.data.store.frame_fingerprint` of those bars and of the feature table.
    """

    strategy: str
    timeframe: str
    symbols: tuple[str, ...]
    start: str
    end: str
    split_ts: str
    store: str
    bars_fingerprint: str
    table_fingerprint: str
    train_end: str
    trial_sharpes: tuple[float, ...] = ()
    n_trials: int = 0
    trial_correlation: float = 0.0
    pbo: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def split(self) -> datetime:
        return datetime.fromisoformat(self.split_ts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["symbols"] = list(self.symbols)
        d["trial_sharpes"] = [float(x) for x in self.trial_sharpes if math.isfinite(x)]
        d["pbo"] = None if not math.isfinite(self.pbo) else float(self.pbo)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaluationWindow:
        missing = [k for k in ("strategy", "timeframe", "symbols", "start", "end", "split_ts",
                               "store", "bars_fingerprint", "table_fingerprint") if k not in d]  # fmt: skip
        if missing:
            raise WindowUnavailableError(
                f"the recorded evaluation window lacks {missing}. Fix: re-validate the model "
                "version with the research pipeline (`wb run research`)."
            )
        pbo = d.get("pbo")
        return cls(
            strategy=str(d["strategy"]), timeframe=str(d["timeframe"]),
            symbols=tuple(d["symbols"]), start=str(d["start"]), end=str(d["end"]),
            split_ts=str(d["split_ts"]), store=str(d["store"]),
            bars_fingerprint=str(d["bars_fingerprint"]),
            table_fingerprint=str(d["table_fingerprint"]), train_end=str(d.get("train_end", "")),
            trial_sharpes=tuple(float(x) for x in d.get("trial_sharpes") or ()),
            n_trials=int(d.get("n_trials") or 0),
            trial_correlation=float(d.get("trial_correlation") or 0.0),
            pbo=math.nan if pbo is None else float(pbo), extra=dict(d.get("extra") or {}),
        )  # fmt: skip


def project_relative(cfg: WorkbenchConfig, path: str | Path) -> str:
    """``path`` relative to the project root when it lies inside it (portable), else as given."""
    p = Path(path)
    try:
        return Path(p.resolve()).relative_to(cfg.project_root.resolve()).as_posix()
    except ValueError:
        return str(path)


def build_feature_table(
    cfg: WorkbenchConfig, bars: pl.DataFrame, strategy: str, fingerprint: str | None = None
) -> pl.DataFrame:
    """The strategy's feature table of ``bars`` (what the features step writes): complete
    feature rows with ``label`` and ``t1`` joined, sorted by key. Features come from the feature
    store when cached there, else are computed (and cached)."""
    from workbench.data.schema import KEY
    from workbench.features.sets import resolve_feature_set
    from workbench.features.store import FeatureStore
    from workbench.labels import build_labels

    strat = cfg.strategy(strategy)
    fs = resolve_feature_set(strat.feature_set, cfg)
    feats = FeatureStore.from_config(cfg).get_or_compute(
        bars, fs, fingerprint or frame_fingerprint(bars), cfg
    )
    labels = build_labels(bars, strat.label)
    return (
        feats.drop_nulls(list(fs.columns))
        .join(labels.select(*KEY, "label", "t1"), on=list(KEY), how="left")
        .sort(list(KEY))
    )


def read_window_bars(cfg: WorkbenchConfig, window: EvaluationWindow) -> pl.DataFrame:
    """The bars of ``window`` from the store it names, checked against the recorded fingerprint.

    Raises :class:`WindowUnavailableError` naming the store, the window and the fix when the
    store is gone, lacks a symbol or a part of the window, or holds different bars.
    """
    from workbench.data.ingest import to_window

    root = cfg.path(window.store)
    what = (
        f"{window.timeframe} bars of {list(window.symbols)} from {window.start} to {window.end} "
        f"in the store {root}"
    )
    fix = (
        "Fix: re-ingest that window into the store (01_ingest / `wb ingest` with the same "
        "symbols, timeframe and dates), or re-validate the model on data the store holds "
        "(`wb run research`)."
    )
    if not root.exists():
        raise WindowUnavailableError(
            f"the store no longer holds the {what}: it does not exist. {fix}"
        )
    lo, hi = to_window(window.start, window.end)
    try:
        bars = BarStore(root, cfg.store.partition).read(
            list(window.symbols), window.timeframe, lo, hi
        )
    except WorkbenchError as exc:
        raise WindowUnavailableError(
            f"the store no longer holds the {what}: {exc}. {fix}"
        ) from None
    if bars.is_empty():
        raise WindowUnavailableError(f"the store no longer holds the {what}: no bars. {fix}")
    fp = frame_fingerprint(bars)
    if fp != window.bars_fingerprint:
        first, last = bars["ts"].min(), bars["ts"].max()
        raise WindowUnavailableError(
            f"the store no longer holds the {what} as validated: it has {bars.height} bars from "
            f"{first} to {last} with fingerprint {fp[:12]}, the validation read "
            f"{window.bars_fingerprint[:12]} (bars missing or rewritten). {fix}"
        )
    return bars


def reproduce_window(
    cfg: WorkbenchConfig, window: EvaluationWindow
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rebuild ``(feature table, bars)`` of a recorded window from the bar store.

    The table is checked against the recorded fingerprint: a difference means the feature set,
    the label or their code changed since the validation, and the evaluation would not be the
    one recorded (:class:`WindowUnavailableError`, naming the fix).
    """
    bars = read_window_bars(cfg, window)
    table = build_feature_table(cfg, bars, window.strategy, window.bars_fingerprint)
    fp = frame_fingerprint(table)
    if fp != window.table_fingerprint:
        raise WindowUnavailableError(
            f"the feature table rebuilt from the store ({table.height} rows, fingerprint "
            f"{fp[:12]}) is not the one validated ({window.table_fingerprint[:12]}): the feature "
            f"set or the label of strategy {window.strategy!r} changed since. Fix: re-validate "
            "the model versions with the current definitions (`wb run research`)."
        )
    return table, bars
