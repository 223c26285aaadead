"""The frame API: validate bars and targets, lay them on a ``[time x symbol]`` grid, simulate.

Time contract: the target at row ``ts`` is decided at the close of bar ``ts`` and fills at that
symbol's next bar, at its open (or vwap, ``fill_price``); the last bar's decision never fills (it is
recorded as ``end_of_data``). Equity is marked at each bar's close (the last close for a symbol
without a bar at that time). Orders blocked or cut by a risk rule are recorded in
``result.rejections`` with a reason, never raised.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from workbench.backtest import _kernels as K
from workbench.backtest.costs import CostModel
from workbench.backtest.result import BacktestResult, SimOutput
from workbench.config import BacktestConfig
from workbench.data.assets import AssetFacts, facts_for
from workbench.data.schema import BAR_COLUMNS, BAR_SCHEMA, PRICE_COLUMNS, TS_DTYPE, validate_bars
from workbench.data.validated import mark_validated, same_buffers, validated_facts
from workbench.errors import SchemaError

_US_PER_DAY = 86_400_000_000
_SESSION_SHIFT_US = (
    4 * 3_600_000_000
)  # UTC - 4h puts every US session (and midnight ET) on its date
TARGET_COLUMNS = ("symbol", "ts", "target")
CLIP_TOLERANCE = 0.01  # buying-power cuts under 1% of the order are applied without a record


def run_backtest(
    bars: pl.DataFrame,
    targets: pl.DataFrame,
    *,
    config: BacktestConfig | None = None,
    assets: Mapping[str, AssetFacts] | None = None,
    periods_per_year: float | None = None,
    validate: bool = True,
    risk: Any = None,
) -> BacktestResult:
    """Simulate trading ``targets`` on ``bars`` and return equity, positions, trades and stats.

    Parameters
    ----------
    bars : pl.DataFrame
        Bars in the bar contract (see :func:`workbench.data.schema.validate_bars`).
    targets : pl.DataFrame
        Columns ``symbol, ts, target``; one row per decision, keys a subset of the bars' keys.
        ``target`` is read per ``config.sizing``: a signed fraction of equity (``fraction``), signed
        currency notional (``notional``) or signed shares (``shares``). A null target (or a missing
        row) is no decision: the position is held. With ``rebalance='on_change'`` an order is sent
        only when the target differs from the symbol's previous target.
    config : BacktestConfig, optional
        Cash, fill price, sizing, share rules and costs (default ``BacktestConfig()``).
    assets : Mapping[str, AssetFacts], optional
        Per-symbol facts (shortable, fractionable, tradable); unknown symbols are permissive.
    periods_per_year : float, optional
        Annualisation factor of the statistics (default: observed bars per session x 252).
    validate : bool, default True
        Check the bars against the bar contract (:func:`validate_bars`, or its one-pass
        equivalent when the frame already conforms). A frame returned by ``BarStore.read``, or
        one this function already checked, carries a mark (:mod:`workbench.data.validated`)
        and is not checked again while it is unchanged; an edited frame loses the mark. False
        trusts the caller: only the columns and the ``ts`` type are checked.
    risk : workbench.risk.RiskPolicy, optional
        Trade under a risk policy: ``targets`` then carries model predictions (columns ``symbol,
        ts, prediction``) and the policy's decision, sizing, limits, kill switch and end-of-day
        flatten run bar by bar inside the kernel. Orders are sized in shares at the decision
        bar's close (as a live session must) and fill at the next bar; ``result.rejections``
        holds every denial with its rule, values and reason, ``result.orders`` every order and
        ``result.kill_switch`` the trip, if any. ``config.sizing`` and ``config.rebalance`` do
        not apply (the policy sizes; it rebalances on a change of target beyond
        ``sizing.min_trade``).

    Returns
    -------
    BacktestResult
        ``equity``, ``positions``, ``fills``, ``trades``, ``rejections`` and ``stats``.

    Raises
    ------
    SchemaError
        When bars or targets break their contract, naming the column, the bad value and the fix.
    """
    cfg = config if config is not None else BacktestConfig()
    if not validate:
        bars = _check_trusted_bars(bars)
        facts = validated_facts(bars)
    else:
        facts = validated_facts(bars)  # read from the store (or checked here) and unchanged
        if facts is None:
            runs = _conformed_runs(bars)
            if runs is None:
                bars = validate_bars(bars)  # conforms, sorts, or raises the contract's own error
            if bars.height:
                facts = mark_validated(bars)
                if runs is not None:
                    facts["runs"] = runs
    if bars.height == 0:
        raise SchemaError(
            "bars rejected: the frame is empty. Fix: load at least two bars per symbol.",
            rule="empty",
        )
    if max(bars.n_chunks("all")) > 1:  # one copy now; zero-copy numpy views from here on
        bars = bars.rechunk()
    runs = facts.get("runs") if facts is not None else None
    if runs is None:
        runs = _symbol_runs(bars["symbol"])
        if facts is not None:
            facts["runs"] = runs
    grid = _Grid.build(bars, runs)
    target_vec = _align_targets(bars, targets, "prediction" if risk is not None else "target")

    price_col = "vwap" if cfg.fill_price == "vwap" else "open"
    ref_vec = bars["open"].to_numpy()
    if price_col == "vwap":
        ref_vec = bars.select(pl.col("vwap").fill_null(pl.col("open")))["vwap"].to_numpy()
    close = grid.to_2d(bars["close"].to_numpy())
    ref = grid.to_2d(ref_vec)
    target = grid.to_2d(target_vec)
    costs = cfg.costs
    need_hl = (
        costs.spread_from_bars or costs.impact_coef > 0 or risk is not None
        or costs.model == "learned"
    )  # fmt: skip
    if need_hl:
        high = grid.to_2d(bars["high"].to_numpy())
        low = grid.to_2d(bars["low"].to_numpy())
        volume = grid.to_2d(bars["volume"].to_numpy())
    else:
        high = low = volume = np.empty((0, grid.n_symbols))
    cost_model = CostModel.from_config(costs)
    cost_arrays = cost_model.prepare(
        high, low, close, volume, grid.ts_us, intraday=grid.intraday, symbols=grid.symbols
    )
    facts = facts_for(grid.symbols, assets)
    tradable = np.array([facts[s].tradable for s in grid.symbols], dtype=np.bool_)
    shortable = np.array([facts[s].shortable for s in grid.symbols], dtype=np.bool_)
    fractionable = np.array([facts[s].fractionable for s in grid.symbols], dtype=np.bool_)

    params = np.zeros(K.N_PARAMS)
    params[K.P_CASH] = cfg.initial_cash
    params[K.P_SIZING] = K.SIZING_CODES[cfg.sizing]
    params[K.P_FRACTIONAL] = float(cfg.fractional)
    params[K.P_ALLOW_SHORT] = float(cfg.allow_short)
    params[K.P_LEVERAGE] = cfg.max_leverage
    params[K.P_EVERY_BAR] = float(cfg.rebalance == "every_bar")
    params[K.P_PER_SHARE] = costs.commission_per_share
    params[K.P_MIN] = costs.commission_min
    params[K.P_BPS] = costs.commission_bps
    params[K.P_FLAT] = costs.commission_flat
    params[K.P_IMPACT] = cost_model.impact_param
    params[K.P_CLIP_TOL] = CLIP_TOLERANCE
    ppy = periods_per_year if periods_per_year is not None else grid.periods_per_year()
    log = None
    if risk is not None:
        out, log = risk.simulate(
            symbols=grid.symbols,
            ts_us=grid.ts_us,
            ref=ref,
            close=close,
            high=high,
            low=low,
            pred=target,
            cost_arrays=cost_arrays,
            params=params,
            assets=assets,
            initial_cash=cfg.initial_cash,
        )
    else:
        const_slip, const_borrow = cost_model.constant_rows(intraday=grid.intraday)
        out = K.simulate_nb(
            *K.frozen(
                ref,
                close,
                target,
                cost_arrays.half_spread,
                cost_arrays.sigma,
                cost_arrays.volume,
                cost_arrays.slip_row[:1] if const_slip else cost_arrays.slip_row,
                cost_arrays.borrow_row[:1] if const_borrow else cost_arrays.borrow_row,
                tradable,
                shortable,
                fractionable,
                params,
            )
        )
    return BacktestResult(
        sim=SimOutput(*out),
        bars=bars,
        close=close,
        symbols=grid.symbols,
        ts_us=grid.ts_us,
        borrow_row=cost_arrays.borrow_row,
        config=cfg,
        periods_per_year=float(ppy),
        to_2d=grid.to_2d,
        risk_log=log,
    )


def _conforms(bars: object) -> bool:
    """Return True when ``validate_bars`` would return ``bars`` unchanged (one fast pass).

    Checks the exact schema, every value rule of the bar contract and the ``(symbol, ts)`` order
    (which implies unique keys) on zero-copy arrays. Any doubt returns False and the caller runs
    ``validate_bars``, which raises the contract's own error or conforms the frame.
    """
    return _conformed_runs(bars) is not None


def _conformed_runs(bars: object) -> tuple[list[str], np.ndarray] | None:
    """:func:`_conforms` returning the symbols and their run lengths (None: does not conform),
    which the grid reuses."""
    if not isinstance(bars, pl.DataFrame) or bars.height == 0:
        return None
    if list(bars.columns) != list(BAR_COLUMNS) or dict(bars.schema) != BAR_SCHEMA:
        return None
    required = ("symbol", "ts", *PRICE_COLUMNS, "volume")
    if any(bars[c].null_count() for c in required):
        return None
    symbols, lengths = _symbol_runs(bars["symbol"])
    if "" in symbols or any(a >= b for a, b in itertools.pairwise(symbols)):
        return None  # empty symbol, symbols out of order or split into several runs
    vwap = bars["vwap"]
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    arrays = (*(bars[x].to_numpy() for x in (*PRICE_COLUMNS, "volume")), vwap.to_numpy())
    ts = bars["ts"].dt.epoch("us").to_numpy()
    ok, n_nan = K.bars_ok_nb(*K.frozen(*arrays, ts, starts))  # values and time order, one pass
    if not ok or n_nan != vwap.null_count():  # nulls become NaN: more NaN than nulls is a bad NaN
        return None
    tc_min = bars["trade_count"].min()
    if tc_min is not None and tc_min < 0:  # type: ignore[operator]
        return None
    return symbols, lengths


def _symbol_runs(symbol: pl.Series) -> tuple[list[str], np.ndarray]:
    """The runs ``(symbols, lengths)`` of a symbol column in row order (as ``Series.rle``).

    Fast path: one pass over the column's Arrow string views, exact when the runs' symbols come
    out strictly ascending (as in bars sorted by symbol); anything else is left to ``rle``.
    """
    starts = _view_run_starts(symbol)
    if starts is not None and len(starts):
        symbols = symbol.gather(starts).to_list()
        if all(a < b for a, b in itertools.pairwise(symbols)):
            lengths = np.diff(np.append(starts, symbol.len()))
            return symbols, lengths
    rle = symbol.rle()
    return rle.struct.field("value").to_list(), rle.struct.field("len").to_numpy()


def _view_run_starts(symbol: pl.Series) -> np.ndarray | None:
    if symbol.dtype != pl.String or symbol.null_count() or symbol.len() == 0:
        return None
    try:
        chunks = pa.chunked_array(symbol).chunks  # zero-copy export
    except (pa.ArrowException, TypeError, ValueError):
        return None
    if len(chunks) != 1 or not pa.types.is_string_view(chunks[0].type):
        return None
    c = chunks[0]
    views = np.frombuffer(c.buffers()[1], dtype=np.uint64)
    return K.view_runs_nb(*K.frozen(views), c.offset, len(c))


def _check_trusted_bars(bars: pl.DataFrame) -> pl.DataFrame:
    if not isinstance(bars, pl.DataFrame):
        raise SchemaError(
            f"bars rejected: expected a polars DataFrame, got {type(bars).__name__}. "
            "Fix: convert with pl.from_pandas(df.reset_index()).",
            rule="not a frame",
        )
    if list(bars.columns) != list(BAR_COLUMNS) or bars.schema["ts"] != TS_DTYPE:
        raise SchemaError(
            "bars rejected: validate=False needs frames that already passed validate_bars "
            f"(columns {list(BAR_COLUMNS)}, ts {TS_DTYPE}); got {bars.schema}. "
            "Fix: call run_backtest(..., validate=True).",
            rule="unvalidated",
        )
    return bars


class _Grid:
    """Row/column positions of long bars on the union ``[time x symbol]`` grid."""

    def __init__(
        self, symbols: list[str], ts_us: np.ndarray, rows: np.ndarray | None, cols: np.ndarray
    ) -> None:
        self.symbols = symbols
        self.ts_us = ts_us
        self.rows = rows  # None: every symbol has every timestamp (reshape fast path)
        self.cols = cols
        self.n_symbols = len(symbols)
        self.n_rows = len(ts_us)
        # median bar spacing from a sample (cheap on a million bars)
        sample = np.diff(ts_us[:10_001])
        spacing = np.median(sample) if len(sample) else _US_PER_DAY
        self.intraday = bool(spacing < _US_PER_DAY * 0.99)

    @classmethod
    def build(cls, bars: pl.DataFrame, runs: tuple[list[str], np.ndarray] | None = None) -> _Grid:
        symbols, lengths = runs if runs is not None else _symbol_runs(bars["symbol"])
        ts = bars["ts"].dt.epoch("us").to_numpy()
        n_s = len(symbols)
        first = int(lengths[0])
        if (lengths == first).all():
            block = ts.reshape(n_s, first)
            if n_s == 1 or (block == block[0]).all():
                return cls(symbols, block[0].copy(), None, np.empty(0, dtype=np.int64))
        grid = pl.Series(ts).unique().sort().to_numpy()
        rows = np.searchsorted(grid, ts)
        cols = np.repeat(np.arange(n_s), lengths)
        return cls(symbols, grid, rows, cols)

    def to_2d(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if self.rows is None:
            return np.ascontiguousarray(values.reshape(self.n_symbols, self.n_rows).T)
        out = np.full((self.n_rows, self.n_symbols), np.nan)
        out[self.rows, self.cols] = values
        return out

    def periods_per_year(self) -> float:
        # sorted grid: count the changes of date (UTC - 4h puts every US session on its date)
        sessions = 1 + K.day_changes_nb(self.ts_us, _SESSION_SHIFT_US, _US_PER_DAY)
        return 252.0 * self.n_rows / sessions


def _align_targets(bars: pl.DataFrame, targets: pl.DataFrame, column: str = "target") -> np.ndarray:
    """Return the target (or prediction) of every bar row (NaN = no decision), in bar order."""
    if column != "target":
        if not isinstance(targets, pl.DataFrame) or column not in targets.columns:
            got = targets.columns if isinstance(targets, pl.DataFrame) else type(targets).__name__
            raise SchemaError(
                f"predictions rejected: run_backtest(..., risk=policy) reads a {column!r} column "
                f"(symbol, ts, {column}); got {got}. Fix: pass the model's predictions, e.g. "
                "workbench.models.lgbm.predict(model, table, features), not targets.",
                rule="missing column",
            )
        targets = targets.select("symbol", "ts", pl.col(column).alias("target"))
    if not isinstance(targets, pl.DataFrame):
        raise SchemaError(
            f"targets rejected: expected a polars DataFrame with columns {list(TARGET_COLUMNS)}, "
            f"got {type(targets).__name__}. Fix: build it with pl.DataFrame or signals_to_targets().",
            rule="not a frame",
        )
    missing = [c for c in TARGET_COLUMNS if c not in targets.columns]
    if missing:
        raise SchemaError(
            f"targets rejected: missing column(s) {missing}; got {targets.columns}. Fix: provide "
            f"{list(TARGET_COLUMNS)}, e.g. df.rename({{'weight': 'target'}}).",
            rule="missing column",
        )
    tgt_dtype = targets.schema["target"]
    if not (tgt_dtype.is_numeric() or tgt_dtype == pl.Null):
        raise SchemaError(
            f"targets rejected: column 'target' has type {tgt_dtype}, expected a number. "
            "Fix: pl.col('target').cast(pl.Float64).",
            rule="mistyped column",
        )
    ts_dtype = targets.schema["ts"]
    if not isinstance(ts_dtype, pl.Datetime) or ts_dtype.time_zone != "UTC":
        raise SchemaError(
            f"targets rejected: column 'ts' has type {ts_dtype}, expected Datetime(time_zone='UTC') "
            "like the bars. Fix: pl.col('ts').dt.convert_time_zone('UTC') (or replace_time_zone for "
            "naive UTC values).",
            rule="mistyped column",
        )
    exact = (
        targets.schema["symbol"] == pl.String and ts_dtype == TS_DTYPE and tgt_dtype == pl.Float64
    )
    if exact:  # nothing to cast: select the columns (no copy)
        t = targets.select(TARGET_COLUMNS)
    else:
        t = targets.select(
            pl.col("symbol").cast(pl.String),
            pl.col("ts").cast(TS_DTYPE),
            pl.col("target").cast(pl.Float64),
        )
    values = _nan_for_null(t["target"])
    n_bad = K.count_nonfinite_nb(*K.frozen(values)) - t["target"].null_count()  # nulls: no decision
    if n_bad:
        bad = t.filter(pl.col("target").is_not_null() & ~pl.col("target").is_finite())
        raise SchemaError(
            f"targets rejected: {bad.height} row(s) have a NaN/inf target, first: "
            f"{bad.row(0, named=True)}. Fix: use null for 'no decision' "
            "(pl.col('target').fill_nan(None)) and finite numbers otherwise.",
            rule="target is finite",
            n_rows=bad.height,
        )
    # fast path: one target per bar, same keys (bar keys are unique, so these are too)
    keys = bars.select("symbol", "ts")
    if t.height == keys.height:
        if _same_keys(t, keys):
            return values
        t_sorted = t.sort("symbol", "ts")
        if _same_keys(t_sorted, keys):
            return _nan_for_null(t_sorted["target"])
    dup = t.filter(pl.struct("symbol", "ts").is_duplicated())
    if dup.height:
        raise SchemaError(
            f"targets rejected: {dup.height} row(s) repeat a (symbol, ts) key, first: "
            f"{dup.row(0, named=True)}. Fix: keep one decision per bar, e.g. "
            "targets.unique(subset=['symbol', 'ts'], keep='last').",
            rule="unique (symbol, ts)",
            n_rows=dup.height,
        )
    unmatched = t.join(keys, on=["symbol", "ts"], how="anti")
    if unmatched.height:
        known = set(bars["symbol"].unique().to_list())
        row = unmatched.row(0, named=True)
        why = (
            f"symbol {row['symbol']!r} has no bars"
            if row["symbol"] not in known
            else f"there is no bar for {row['symbol']!r} at {row['ts']}"
        )
        raise SchemaError(
            f"targets rejected: {unmatched.height} row(s) do not match a bar; first: {row} ({why}). "
            "Fix: make decisions only at bar timestamps, e.g. join the targets to the bars' "
            "(symbol, ts) keys before calling run_backtest.",
            rule="targets aligned to bars",
            n_rows=unmatched.height,
        )
    aligned = keys.join(t, on=["symbol", "ts"], how="left", maintain_order="left")
    return _nan_for_null(aligned["target"])


def _same_keys(t: pl.DataFrame, keys: pl.DataFrame) -> bool:
    # targets built from the bars' own key columns share their memory: equal without a scan
    return all(same_buffers(t[c], keys[c]) or t[c].equals(keys[c]) for c in ("ts", "symbol"))


def _nan_for_null(target: pl.Series) -> np.ndarray:
    # filling nulls first hands numpy the values without a masked copy
    return target.fill_null(np.nan).to_numpy().astype(np.float64, copy=False)
