"""Turn model scores or signals into the target frame :func:`run_backtest` reads."""

from __future__ import annotations

import polars as pl

from workbench.errors import SchemaError


def signals_to_targets(
    scores: pl.DataFrame,
    *,
    score_col: str = "score",
    long_threshold: float = 0.0,
    short_threshold: float = 0.0,
    max_position: float = 0.1,
    allow_short: bool = True,
) -> pl.DataFrame:
    """Map a score per ``(symbol, ts)`` to a target fraction of equity.

    ``target = +max_position`` where ``score > long_threshold``, ``-max_position`` where
    ``score < short_threshold`` (0 when ``allow_short`` is False), else 0; a null score gives a null
    target (no decision: the position is held).

    Parameters
    ----------
    scores : pl.DataFrame
        Columns ``symbol``, ``ts`` and ``score_col`` (e.g. a predicted forward return).
    score_col : str, default "score"
        Name of the score column.
    long_threshold, short_threshold : float
        Thresholds with ``short_threshold <= long_threshold``.
    max_position : float, default 0.1
        Absolute fraction of equity per symbol when a threshold is crossed.
    allow_short : bool, default True
        Whether scores below ``short_threshold`` go short (else flat).

    Returns
    -------
    pl.DataFrame
        ``symbol, ts, target`` for ``run_backtest(..., config=BacktestConfig(sizing='fraction'))``.

    Raises
    ------
    SchemaError
        When a column is missing or the thresholds are inverted.
    """
    missing = [c for c in ("symbol", "ts", score_col) if c not in scores.columns]
    if missing:
        raise SchemaError(
            f"scores rejected: missing column(s) {missing}; got {scores.columns}. "
            f"Fix: pass score_col='<your column>' or rename it to {score_col!r}.",
            rule="missing column",
        )
    if short_threshold > long_threshold:
        raise SchemaError(
            f"short_threshold must be <= long_threshold; got short_threshold={short_threshold} > "
            f"long_threshold={long_threshold}. Fix: swap them or set them equal.",
            rule="thresholds",
        )
    if max_position < 0:
        raise SchemaError(
            f"max_position must be >= 0 (a fraction of equity); got {max_position}. "
            "Fix: pass its absolute value; the sign comes from the score.",
            rule="max_position",
        )
    s = pl.col(score_col).cast(pl.Float64)
    short = -max_position if allow_short else 0.0
    target = (
        pl.when(s.is_null() | s.is_nan())
        .then(None)
        .when(s > long_threshold)
        .then(pl.lit(max_position))
        .when(s < short_threshold)
        .then(pl.lit(short))
        .otherwise(pl.lit(0.0))
    )
    return scores.select("symbol", "ts", target.cast(pl.Float64).alias("target"))
