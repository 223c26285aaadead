"""Scale-out on Dask: sweep, parallel search and features fan-out against serial; cost curves.

    .venv/bin/python benchmarks/bench_dask.py [--parts sweep,search,features,curves] [--quick]

* ``sweep``: a 4-variant sweep of a one-step pipeline (its notebook sorts ``--reps`` arrays of a
  million normals, single-threaded) with ``--executor local`` and on a LocalCluster of 2 workers;
  target: >= 1.6x.
* ``search``: 32 Optuna trials (LightGBM, 3 purged folds, no pruning) on 1 process and on 2 Dask
  workers sharing a journal file; target: >= 1.6x.
* ``features``: 500 symbols x 10,000 5Min bars (5M rows), the bench_features set, in-process
  (polars uses every core) and fanned out over 2 worker processes; target: >= 1.6x. The frames
  are checked equal.
* ``curves``: time and peak memory (RSS above the process's start) of simulate, ingest,
  features, train and backtest over symbols x bars, each size in a fresh process; a least-squares
  fit ``seconds = a + b x rows`` per step is projected to 1,000 and 5,000 symbols of 1-minute
  bars over 5 years (491,400 bars per symbol).

The load average is printed first and last: on a shared machine the ratios depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.2f}, {b:.2f}, {c:.2f}"


# ------------------------------------------------------------------------------------- sweep

NOTEBOOK = """# %% tags=["parameters"]
seed: int = 0  # the variant
reps: int = 40  # sorts of a million normals: single-threaded work
output_path: str = ""  # set by the runner
parent_run_id: str = ""  # set by the runner
pipeline: str = ""  # set by the runner

# %%
import numpy as np
from workbench.tracking import start_stage

stage = start_stage("work", dict(seed=seed), pipeline=pipeline, parent_run_id=parent_run_id,
                    output_path=output_path)
rng = np.random.default_rng(seed)
acc = 0.0
for _ in range(reps):
    acc += float(np.sort(rng.normal(size=1_000_000))[500_000])
stage.log_metrics({"acc": acc})
stage.hand_on(done=True)
stage.finish()
"""


def bench_sweep(reps: int) -> dict:
    import jupytext

    from workbench.config import load_config
    from workbench.pipeline.sweep import run_sweep

    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    (tmp / "config").mkdir()
    (tmp / "config" / "workbench.yaml").write_text("mlflow:\n  experiment: bench\n")
    (tmp / "pipelines").mkdir()
    (tmp / "pipelines" / "w.yaml").write_text(
        "name: w\nparameters:\n  seed: 0\n  reps: 40\nsteps:\n  - name: work\n"
        "    notebook: nb/work.ipynb\n    parameters: {seed: '${seed}', reps: '${reps}'}\n"
        "    outputs: [done]\n"
    )
    nb = jupytext.reads(NOTEBOOK, fmt="py:percent")
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    (tmp / "nb").mkdir()
    jupytext.write(nb, tmp / "nb" / "work.ipynb")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = load_config(tmp)
    grid = ["seed=1,2,3,4", f"reps={reps}"]
    quiet = lambda _: None  # noqa: E731
    run_sweep("w", ["seed=0", "reps=1"], executor="local", cfg=cfg, echo=quiet)  # warm
    from distributed import LocalCluster

    t0 = time.perf_counter()
    serial = run_sweep("w", grid, executor="local", cfg=cfg, echo=quiet)
    t_serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    dask = run_sweep("w", grid, executor="dask", workers=2, cfg=cfg, echo=quiet)
    t_cold = time.perf_counter() - t0
    # a cluster that is already up, with workers that have imported the workbench (dask.address)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as cluster:
        on = cfg.model_copy(
            update={"dask": cfg.dask.model_copy(update={"address": cluster.scheduler_address})}
        )
        run_sweep("w", ["seed=0,9", "reps=1"], executor="dask", cfg=on, echo=quiet)  # warm
        t0 = time.perf_counter()
        warm = run_sweep("w", grid, executor="dask", cfg=on, echo=quiet)
        t_warm = time.perf_counter() - t0
    assert serial.ok and dask.ok and warm.ok
    assert [v.metrics for v in serial.variants] == [v.metrics for v in dask.variants]
    assert [v.metrics for v in serial.variants] == [v.metrics for v in warm.variants]
    return {
        "serial_s": round(t_serial, 2),
        "dask_cold_s": round(t_cold, 2),
        "dask_warm_s": round(t_warm, 2),
        "speedup_cold": round(t_serial / t_cold, 2),
        "speedup_warm": round(t_serial / t_warm, 2),
        "variant_s_serial": [v.seconds for v in serial.variants],
        "variant_s_cold": [v.seconds for v in dask.variants],
        "variant_s_warm": [v.seconds for v in warm.variants],
        "note": "cold: starts the LocalCluster, fresh workers import mlflow/papermill; warm: a "
        "running cluster (dask.address) whose workers ran a sweep before",
    }


# ------------------------------------------------------------------------------------ search


def _search_table(n_ts: int, n_sym: int = 4):
    from datetime import UTC, datetime, timedelta

    import polars as pl

    rng = np.random.default_rng(0)
    ts = [datetime(2024, 1, 2, 14, 30, tzinfo=UTC) + timedelta(minutes=5 * i) for i in range(n_ts)]
    frames = []
    for s in range(n_sym):
        x = rng.normal(size=(n_ts, 4))
        label = 0.004 * x[:, 0] + 0.002 * x[:, 1] + rng.normal(scale=0.01, size=n_ts)
        cols = {f"f{i}": x[:, i] for i in range(4)}
        frames.append(pl.DataFrame({"symbol": f"S{s}", "ts": ts, **cols, "label": label}))
    return (
        pl.concat(frames).with_columns(t1=pl.col("ts") + timedelta(minutes=15)).sort("symbol", "ts")
    )


def bench_search(n_trials: int, n_ts: int) -> dict:
    import mlflow
    import optuna
    from distributed import Client, LocalCluster
    from optuna.distributions import FloatDistribution, IntDistribution

    from workbench.models.search import run_search
    from workbench.validation.cv import PurgedKFold

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench_search_"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("bench_search")
    table = _search_table(n_ts)
    space = {
        "num_leaves": IntDistribution(7, 63, log=True),
        "learning_rate": FloatDistribution(0.02, 0.2, log=True),
        "min_child_samples": IntDistribution(20, 200, log=True),
        "num_boost_round": IntDistribution(100, 300),
    }

    def go(name: str, **kw) -> float:
        t0 = time.perf_counter()
        res = run_search(
            table,
            ["f0", "f1", "f2", "f3"],
            splitter=PurgedKFold(3, embargo=3),
            n_trials=n_trials,
            seed=0,
            storage=f"journal:{tmp / (name + '.journal')}",
            study_name=name,
            search_space=space,
            pruner=optuna.pruners.NopPruner(),
            progress=False,
            **kw,
        )
        assert len(res.study.trials) == n_trials
        return time.perf_counter() - t0

    t_serial = go("serial")
    t0 = time.perf_counter()
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        t_start = time.perf_counter() - t0
        t_par = go("parallel", workers=2, cluster=client)
    return {
        "rows": table.height,
        "trials": n_trials,
        "serial_s": round(t_serial, 2),
        "dask_2_workers_s": round(t_par, 2),
        "cluster_start_s": round(t_start, 2),
        "speedup": round(t_serial / t_par, 2),
        "speedup_with_cluster_start": round(t_serial / (t_par + t_start), 2),
    }


# ---------------------------------------------------------------------------------- features


def bench_features(n_symbols: int, n_bars: int) -> dict:
    from distributed import Client, LocalCluster
    from polars.testing import assert_frame_equal

    sys.path.insert(0, str(HERE))
    from bench_features import SPECS, make_bars

    from workbench.features import build_features
    from workbench.features.distributed import build_features_on_dask

    bars = make_bars(n_symbols, n_bars)
    build_features(bars.head(10_000), SPECS)  # warm (first-call compilation), as the workers are
    t0 = time.perf_counter()
    want = build_features(bars, SPECS)
    t_local = time.perf_counter() - t0
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        build_features_on_dask(bars.head(10_000), SPECS, client=client)  # warm the workers
        t0 = time.perf_counter()
        got = build_features_on_dask(bars, SPECS, client=client)
        t_dask = time.perf_counter() - t0
    assert_frame_equal(got, want, check_exact=True)
    return {
        "rows": bars.height,
        "in_process_s": round(t_local, 2),
        "dask_2_workers_s": round(t_dask, 2),
        "speedup": round(t_local / t_dask, 2),
        "note": "in-process polars already runs on both cores",
    }


# ------------------------------------------------------------------------------------ curves

CHILD = textwrap.dedent(
    """
    import json, os, sys, threading, time, tempfile
    from datetime import UTC, date, datetime
    import numpy as np, polars as pl, psutil
    from workbench.config import FeatureSpec
    from workbench.data.sources.synthetic import SyntheticSource
    from workbench.data.store import BarStore
    from workbench.data.ingest import ingest
    from workbench.data.calendar import sessions
    from workbench.features import build_features
    from workbench.models.estimator import LGBMForecaster
    from workbench.backtest import run_backtest

    n_sym, n_days = int(sys.argv[1]), int(sys.argv[2])
    proc = psutil.Process()
    peak = [0]
    stop = [False]
    def sample():
        while not stop[0]:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)
    threading.Thread(target=sample, daemon=True).start()
    out = {}
    def step(name, fn):
        base = proc.memory_info().rss
        peak[0] = base
        t0 = time.perf_counter()
        r = fn()
        out[name] = {"s": time.perf_counter() - t0, "mb": (max(peak[0], proc.memory_info().rss) - base) / 2**20}
        return r
    days = sessions(date(2023, 1, 3), date(2026, 12, 31))["session"].to_list()[:n_days]
    start = datetime.combine(days[0], datetime.min.time(), UTC)
    end = datetime.combine(days[-1], datetime.min.time(), UTC).replace(hour=23)
    syms = [f"SYN{i:04d}" for i in range(n_sym)]
    src = SyntheticSource(seed=7, alpha=0.1)
    src.fetch(syms[:1], "5Min", start, start.replace(hour=23))  # daily state and caches
    bars = step("simulate", lambda: src.fetch(syms, "5Min", start, end))
    store = BarStore(tempfile.mkdtemp(), "month")
    step("ingest", lambda: ingest(src, store, syms, "5Min", days[0], days[-1], progress=False))
    specs = [FeatureSpec(name="returns", params={"periods": 1}, alias="ret_1"),
             FeatureSpec(name="returns", params={"periods": 3}, alias="ret_3"),
             FeatureSpec(name="zscore", params={"window": 20}, alias="zscore_20"),
             FeatureSpec(name="rsi", params={"window": 14}, alias="rsi_14"),
             FeatureSpec(name="volume_zscore", params={"window": 78}, alias="volume_z_78"),
             FeatureSpec(name="time_of_day", alias="time_of_day")]
    build_features(bars.head(2000), specs)  # warm: first-call compilation is not the cost curve
    feats = step("features", lambda: build_features(bars, specs))
    cols = [s.alias for s in specs]
    table = feats.with_columns(label=pl.col("ret_1").shift(-1).over("symbol")).drop_nulls()
    step("train", lambda: LGBMForecaster(num_boost_round=100, n_jobs=1).fit(table.select(cols), table["label"]))
    targets = feats.select("symbol", "ts", target=(-pl.col("zscore_20").sign() * 0.05).fill_null(0.0))
    small = bars.filter(pl.col("symbol") == syms[0])
    run_backtest(small, targets.filter(pl.col("symbol") == syms[0]), validate=False)  # warm
    step("backtest", lambda: run_backtest(bars, targets, validate=False))
    stop[0] = True
    out["rows"] = bars.height
    print(json.dumps(out))
    """
)


def bench_curves(sizes: list[tuple[int, int]]) -> dict:
    rows = []
    for n_sym, n_days in sizes:
        res = subprocess.run(
            [PY, "-c", CHILD, str(n_sym), str(n_days)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        if res.returncode:
            raise RuntimeError(res.stderr[-3000:])
        got = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append({"symbols": n_sym, "days": n_days, **got})
        print(
            f"  {n_sym} symbols x {n_days} days ({got['rows']:,} rows): "
            + ", ".join(
                f"{k} {v['s']:.2f} s / {v['mb']:.0f} MB" for k, v in got.items() if k != "rows"
            ),
            flush=True,
        )
    steps = ["simulate", "ingest", "features", "train", "backtest"]
    fits = {}
    big = {"1000 symbols": 1000 * 491_400, "5000 symbols": 5000 * 491_400}
    n = np.array([r["rows"] for r in rows], dtype=float)
    for s in steps:
        t = np.array([r[s]["s"] for r in rows])
        m = np.array([r[s]["mb"] for r in rows])
        b_t, a_t = np.polyfit(n, t, 1)
        b_m, _ = np.polyfit(n, m, 1)
        fits[s] = {
            "us_per_row": round(b_t * 1e6, 3),
            "bytes_per_row": round(b_m * 2**20, 1),
            **{
                k: {"cpu_hours": round((a_t + b_t * v) / 3600, 2), "gb": round(b_m * v / 1024, 1)}
                for k, v in big.items()
            },
        }
    return {"sizes": rows, "fits": fits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="sweep,search,features,curves")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--reps", type=int, default=40, help="work of a sweep variant (sorts)")
    ap.add_argument("--out", default="", help="write the figures as JSON here")
    args = ap.parse_args()
    parts = args.parts.split(",")
    print(f"bench_dask: {os.cpu_count()} cores, {load()}", flush=True)
    report: dict = {"cores": os.cpu_count(), "load_before": load()}
    if "sweep" in parts:
        report["sweep"] = bench_sweep(5 if args.quick else args.reps)
        print("sweep (4 variants):", report["sweep"], flush=True)
    if "search" in parts:
        report["search"] = bench_search(8 if args.quick else 32, 300 if args.quick else 1500)
        print("search:", report["search"], flush=True)
    if "features" in parts:
        sym, bars = (50, 2000) if args.quick else (500, 10_000)
        report["features"] = bench_features(sym, bars)
        print("features:", report["features"], flush=True)
    if "curves" in parts:
        sizes = (
            [(5, 10), (10, 20)]
            if args.quick
            else [(10, 60), (40, 60), (160, 60), (40, 15), (40, 240)]
        )
        report["curves"] = bench_curves(sizes)
        for s, f in report["curves"]["fits"].items():
            print(f"  fit {s}: {f}")
    report["load_after"] = load()
    print(f"bench_dask done, {load()}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
