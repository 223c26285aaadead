"""LGBMForecaster overhead: the wrapper against raw ``lightgbm.train`` + ``Booster.predict``.

The same data (``--rows`` x ``--cols`` float64, a planted linear signal), the same LightGBM
parameters (``model.lgb_params()``), the same number of rounds, fit then predict on every row.
Three pairs, each timed best-of ``--repeat`` with the two sides interleaved (fair on a shared,
busy machine):

- ``numpy``  — both sides get the same numpy array: the wrapper's own cost (parameter checks,
  Dataset construction, attribute bookkeeping);
- ``polars`` — the wrapper gets the polars frame and converts it itself; the raw side gets the
  frame too and does the conversion a caller would write (``df.to_numpy()``);
- ``pandas`` — the same with a pandas frame (LightGBM's own pandas path on the raw side).

The target is a ratio (wrapper / raw) <= 1.05 on every pair. Whole-fit timings on a shared machine
jitter by several percent, so the wrapper's own edge work (``feature_matrix`` + ``label_vector``,
the only code it adds around LightGBM) is also timed alone, as a share of the raw fit+predict.

Run: ``.venv/bin/python benchmarks/bench_lgbm_wrapper.py [--rows 200000] [--cols 20] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from workbench.models.estimator import LGBMForecaster
from workbench.models.lgbm import feature_matrix, label_vector


def make_data(rows: int, cols: int, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, cols))
    y = x[:, 0] * 0.3 - x[:, 1] * 0.2 + rng.normal(size=rows)
    return pl.DataFrame({f"f{i}": x[:, i] for i in range(cols)}), y


def best_of(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():  # interleaved: both sides see the same machine load
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)  # the wrapper's default n_jobs
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    frame, y = make_data(args.rows, args.cols)
    arr = frame.to_numpy()
    pdf = frame.to_pandas()
    model = LGBMForecaster(num_boost_round=args.rounds, n_jobs=args.threads, seed=0)
    params = model.lgb_params()

    def wrapper(x: Any) -> np.ndarray:
        return model.fit(x, y).predict(x)

    def raw(x: Any) -> np.ndarray:
        booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=args.rounds)
        return booster.predict(x)

    def raw_polars() -> np.ndarray:
        x = frame.to_numpy()
        booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=args.rounds)
        return booster.predict(x)

    np.testing.assert_array_equal(wrapper(frame), raw(arr))  # same model, same predictions
    pairs = {
        "numpy": {"wrapper": lambda: wrapper(arr), "raw": lambda: raw(arr)},
        "polars": {"wrapper": lambda: wrapper(frame), "raw": raw_polars},
        "pandas": {"wrapper": lambda: wrapper(pdf), "raw": lambda: raw(pdf)},
    }
    print(
        f"fit+predict, {args.rows:,} x {args.cols} float64, {args.rounds} rounds, "
        f"{args.threads} threads, best of {args.repeat} (interleaved)"
    )
    inputs = {"numpy": arr, "polars": frame, "pandas": pdf}
    print(f"{'input':8} {'wrapper s':>10} {'raw s':>10} {'ratio':>7} {'edge s':>8} {'edge %':>7}")
    worst = 0.0
    for name, fns in pairs.items():
        t = best_of(fns, args.repeat)
        x = inputs[name]
        edge = best_of(
            {"edge": lambda x=x: (feature_matrix(x), label_vector(y, len(y)))}, args.repeat
        )["edge"]
        ratio = t["wrapper"] / t["raw"]
        worst = max(worst, ratio)
        print(
            f"{name:8} {t['wrapper']:10.3f} {t['raw']:10.3f} {ratio:7.3f} {edge:8.4f} "
            f"{100 * edge / t['raw']:6.2f}%"
        )
    print(f"worst ratio {worst:.3f} (target <= 1.05): {'ok' if worst <= 1.05 else 'OVER'}")


if __name__ == "__main__":
    main()
