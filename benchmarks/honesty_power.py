"""Power study of the research method: is a planted edge promoted, and a null market refused?

Run ``python benchmarks/honesty_power.py [--seeds 10] [--first-seed 0] [--alphas 0 0.1 0.25]
[--months 6] [--symbols 6] [--trials 8] [--out runs/honesty_power]`` (``--merge a/runs.csv
b/runs.csv --out DIR`` rebuilds the table and figure from parts run in parallel). For every seed
and alpha the embedded simulator generates 5-minute bars, and the research method runs on them
through the library calls the notebooks make: the strategy's feature set and label, ``run_train``
(the Optuna search scored by purged K-fold on costed backtests, the refit, the cost-aware decision
thresholds, the CPCV PBO among distinct candidates) and the validate step's walk-forward (the
model's hyperparameters retrained per window, costs on, the deflated Sharpe ratio over the
search's trials) judged by every gate of the strategy. It reports, per alpha, the promoted
fraction and the distributions of the walk-forward Sharpe ratio, DSR, PBO and IC (median and the
spread across seeds), writes them as ``runs.csv``, ``power.csv`` and a plotly figure
``power.html`` in ``--out``, and prints the table. Each run also records what its DSR is made of
(per-bar Sharpe ``sr_bar`` over ``n_bars``, their kurtosis, the effective trials ``n_eff``, the
trials' Sharpe spread ``trial_sd`` and the bar ``sr0`` they set) and the cost multiple chosen.

Targets (issue #15): alpha 0 promoted in none of the seeds; alpha 0.1 and 0.25 in at least 9 of
10. The default size (6 months of 6 symbols: about 50 out-of-sample sessions; 8 trials) is
smaller than the pipeline's defaults and keeps the method. The measured figures and what moved
them are in ``benchmarks/results/honesty_power/README.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

STRATEGY = "intraday_reversal"
TIMEFRAME = "5Min"
METRICS = ("sharpe", "deflated_sharpe", "pbo", "pbo_distinct", "ic", "turnover", "n_trades")


@dataclass(frozen=True)
class Setting:
    """The size of one research run (smaller than the pipeline's defaults, same method)."""

    symbols: int = 6
    months: int = 6
    trials: int = 8
    folds: int = 4
    pbo_configs: int = 6
    walk_forward_folds: int = 4


def run_one(seed: int, alpha: float, setting: Setting, work: Path) -> dict[str, Any]:
    """Run the research method once and return its verdict and measurements."""
    from workbench.config import load_config
    from workbench.data.schema import KEY
    from workbench.data.sources.synthetic import SyntheticSource
    from workbench.data.store import BarStore
    from workbench.features.sets import build_features, resolve_feature_set
    from workbench.labels import build_labels
    from workbench.risk import RiskPolicy
    from workbench.stages.train import run_train
    from workbench.stages.validate import sharpe_significance
    from workbench.validation.cv import WalkForward
    from workbench.validation.gates import evaluate_gates
    from workbench.validation.walkforward import walk_forward

    cfg = load_config()
    strat = cfg.strategy(STRATEGY)
    symbols = [f"SYN{i:03d}" for i in range(setting.symbols)]
    start = datetime(2024, 1, 2, tzinfo=UTC)
    end = datetime(2024, 1 + setting.months, 1, tzinfo=UTC)
    bars = SyntheticSource(seed=seed, alpha=alpha).fetch(symbols, TIMEFRAME, start, end)
    root = work / f"bars-{seed}-{alpha}"
    BarStore(root, cfg.store.partition).write(bars, TIMEFRAME)
    # the features stage's table: every bar whose features are defined, the label left-joined
    fs = resolve_feature_set(strat.feature_set, cfg)
    cols = list(fs.columns)
    table = (
        build_features(bars, fs, cfg)
        .drop_nulls(cols)
        .join(build_labels(bars, strat.label).select(*KEY, "label", "t1"), on=list(KEY), how="left")
        .sort(list(KEY))
    )
    path = work / f"features-{seed}-{alpha}.parquet"
    table.write_parquet(path)

    res = run_train(
        cfg,
        features_path=path,
        store_root=root,
        strategy=STRATEGY,
        timeframe=TIMEFRAME,
        seed=seed,
        n_trials=setting.trials,
        n_folds=setting.folds,
        pbo_configs=setting.pbo_configs,
        storage=f"sqlite:///{work / 'optuna.db'}",
        progress=False,
    )
    # the validate step without the registry: the model's hyperparameters retrained before each
    # of the walk-forward windows over the out-of-sample period, stitched, backtested with costs
    # under the policy the train step resolved (its decision thresholds), judged by the gates
    split = res.split.split_ts
    full = pl.read_parquet(path).sort("ts", "symbol")
    decision = getattr(res, "decision", None)
    policy = RiskPolicy.from_config(cfg, STRATEGY, timeframe=TIMEFRAME, decision=decision)
    oos = BarStore(root, cfg.store.partition).read(symbols, TIMEFRAME, start=split)
    params = {k: v for k, v in res.model.get_params().items() if k != "seed"}
    n_train = full.filter(pl.col("ts") < split)["ts"].n_unique()
    n_test = full.filter(pl.col("ts") >= split)["ts"].n_unique()
    wf = walk_forward(
        full,
        res.features,
        splitter=WalkForward(
            train_size=n_train, test_size=max(1, n_test // setting.walk_forward_folds), embargo=1
        ),
        params=params,
        seed=seed,
        bars=oos,
        risk=policy,
        backtest=cfg.backtest,
    )
    m = dict(wf.metrics)
    m["pbo"] = res.metrics["pbo"]
    m["pbo_distinct"] = res.metrics.get("pbo_distinct", math.nan)
    if wf.backtest is not None:
        m.update(
            sharpe_significance(
                wf.backtest.equity["returns"].to_numpy(),
                res.trial_sharpes,
                int(res.metrics["search_trials"]),
                res.metrics["trial_correlation"],
            )
        )
    gates = evaluate_gates(m, strat.gates)
    out = {"seed": seed, "alpha": alpha, "promoted": float(gates.passed)}
    out.update({k: float(m.get(k, math.nan)) for k in METRICS})
    out["decision_long"] = float(policy.decision.long)
    out.update(_dsr_parts(wf, res))
    out["failures"] = "; ".join(gates.failures())
    return out


def _dsr_parts(wf: Any, res: Any) -> dict[str, float]:
    """What the deflated Sharpe ratio is made of: the judged per-bar Sharpe ratio and its
    record length, the trials' count and spread, the bar they set (SR0)."""
    import numpy as np

    from workbench.validation.overfitting import effective_trials, expected_max_sharpe

    out = {"sr_bar": math.nan, "n_bars": math.nan, "kurt": math.nan}
    if wf.backtest is not None:
        r = wf.backtest.equity["returns"].to_numpy()
        r = r[np.isfinite(r)]
        if len(r) > 2 and r.std() > 0:
            d = r - r.mean()
            out = {"sr_bar": float(r.mean() / r.std(ddof=1)), "n_bars": float(len(r)),
                   "kurt": float(np.mean(d**4) / np.mean(d**2) ** 2)}  # fmt: skip
    ts = [t for t in res.trial_sharpes if math.isfinite(t)]
    n_eff = effective_trials(int(res.metrics["search_trials"]), res.metrics["trial_correlation"])
    var = float(np.var(ts, ddof=1)) if len(ts) >= 2 else math.nan
    out.update(
        n_eff=float(n_eff),
        trial_sd=math.sqrt(var) if math.isfinite(var) else math.nan,
        sr0=float(expected_max_sharpe(n_eff, var)) if math.isfinite(var) else math.nan,
        cost_multiple=float(res.metrics.get("decision_cost_multiple", math.nan)),
    )
    return out


def study(
    seeds: list[int],
    alphas: list[float],
    setting: Setting,
    *,
    progress: bool = True,
    log: Path | None = None,
) -> pl.DataFrame:
    """Run every (seed, alpha) and return one row per run (each also appended to ``log``)."""
    import mlflow
    from tqdm.auto import tqdm

    rows = []
    from mlflow.tracking import fluent

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "WB_MLFLOW__ARTIFACT_ROOT",
            "WB_RISK__STATE_URL")  # fmt: skip
    saved = {k: os.environ.get(k) for k in keys}
    before = mlflow.get_tracking_uri()
    active = fluent._active_experiment_id  # a caller's experiment lives in the caller's store
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # tmpfs: no fsync per Optuna write
    with tempfile.TemporaryDirectory(prefix="honesty-power-", dir=shm) as tmp:
        work = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        os.environ["WB_MLFLOW__ARTIFACT_ROOT"] = str(work / "mlartifacts")
        os.environ["WB_RISK__STATE_URL"] = f"sqlite:///{work / 'risk.db'}"
        try:
            mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
            mlflow.set_experiment("honesty-power")  # never the caller's experiment id
            runs = [
                (a, s) for s in seeds for a in alphas
            ]  # seed-major: a cut run covers every alpha
            for alpha, seed in tqdm(runs, desc="research runs", disable=not progress):
                rows.append(run_one(seed, alpha, setting, work))
                if log is not None:
                    pl.DataFrame(rows).write_csv(log)
        finally:  # the caller's tracking and environment back as they were
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            mlflow.set_tracking_uri(before)
            fluent._active_experiment_id = active
    return pl.DataFrame(rows)


def summary(runs: pl.DataFrame) -> pl.DataFrame:
    """Per alpha: promoted count and fraction, median and spread (IQR, min, max) of each metric."""
    aggs: list[pl.Expr] = [
        pl.len().alias("runs"),
        pl.col("promoted").sum().cast(pl.Int64).alias("promoted"),
        pl.col("promoted").mean().alias("promoted_frac"),
    ]
    for k in ("sharpe", "deflated_sharpe", "pbo", "ic", "turnover"):
        c = pl.col(k).filter(pl.col(k).is_not_nan())
        aggs += [
            c.median().alias(f"{k}_median"),
            (c.quantile(0.75) - c.quantile(0.25)).alias(f"{k}_iqr"),
            c.min().alias(f"{k}_min"),
            c.max().alias(f"{k}_max"),
        ]
    return runs.group_by("alpha").agg(aggs).sort("alpha")


def figure(runs: pl.DataFrame) -> Any:
    """Box plots per alpha of the walk-forward Sharpe, DSR, PBO and IC, and the promoted share."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [
        ("sharpe", "walk-forward Sharpe"),
        ("deflated_sharpe", "deflated Sharpe (probability)"),
        ("pbo", "PBO"),
        ("ic", "walk-forward IC"),
    ]
    fig = make_subplots(rows=1, cols=5, subplot_titles=[t for _, t in panels] + ["promoted"])
    for j, (k, _) in enumerate(panels, start=1):
        for (alpha,), part in runs.group_by("alpha", maintain_order=True):
            fig.add_trace(
                go.Box(
                    y=part[k].to_list(),
                    name=f"alpha {alpha}",
                    boxpoints="all",
                    showlegend=False,
                ),
                row=1,
                col=j,
            )
    s = summary(runs)
    fig.add_trace(
        go.Bar(x=[f"alpha {a}" for a in s["alpha"]], y=s["promoted_frac"].to_list()),
        row=1,
        col=5,
    )
    fig.update_layout(title="Research method power: per seed, per planted alpha", height=450)
    return fig


def report(runs: pl.DataFrame, out: Path) -> pl.DataFrame:
    """Write ``runs.csv``, the per-alpha table ``power.csv`` and the figure ``power.html`` into
    ``out``, print them with each refused run's failed gates, and return the table."""
    out.mkdir(parents=True, exist_ok=True)
    runs = runs.sort("alpha", "seed")
    runs.write_csv(out / "runs.csv")
    s = summary(runs)
    s.write_csv(out / "power.csv")
    figure(runs).write_html(out / "power.html", include_plotlyjs="cdn")  # small file
    with pl.Config(tbl_cols=-1, tbl_rows=-1, tbl_width_chars=250, float_precision=3):
        print(runs.drop("failures"))
        print(
            s.select(
                "alpha", "runs", "promoted", "promoted_frac", pl.selectors.ends_with("_median")
            )
        )
        print(s.select("alpha", pl.selectors.ends_with("_iqr"), "sharpe_min", "sharpe_max"))
    for r in runs.filter(pl.col("failures") != "").iter_rows(named=True):
        print(f"  seed {r['seed']} alpha {r['alpha']}: {r['failures']}")
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.1, 0.25])
    ap.add_argument("--symbols", type=int, default=Setting.symbols)
    ap.add_argument("--months", type=int, default=Setting.months)
    ap.add_argument("--trials", type=int, default=Setting.trials)
    ap.add_argument("--pbo-configs", type=int, default=Setting.pbo_configs)
    ap.add_argument("--out", type=Path, default=Path("runs/honesty_power"))
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="only rebuild the table and figure in --out from these runs.csv files (e.g. the "
        "parts of one study run in parallel with --first-seed)",
    )
    args = ap.parse_args()
    if args.merge:
        report(pl.concat([pl.read_csv(p) for p in args.merge], how="diagonal_relaxed"), args.out)
        return
    setting = Setting(
        symbols=args.symbols, months=args.months, trials=args.trials, pbo_configs=args.pbo_configs
    )
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    t0 = time.process_time()
    w0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = study(seeds, args.alphas, setting, log=args.out / "runs.csv")
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    report(runs, args.out)
    print(f"{len(runs)} runs: {cpu:.0f} s CPU, {wall:.0f} s wall ({setting}); files in {args.out}")


if __name__ == "__main__":
    main()
