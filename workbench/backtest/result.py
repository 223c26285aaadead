"""The result of a backtest: frames built from the kernel's arrays, the costly ones on first use."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import polars as pl

from workbench.backtest import _kernels as K
from workbench.config import BacktestConfig
from workbench.data.schema import TS_DTYPE

if TYPE_CHECKING:
    import plotly.graph_objects as go

REASONS: dict[int, str] = {
    K.NOT_TRADABLE: "not_tradable",
    K.NOT_SHORTABLE: "not_shortable",
    K.SHORT_DISABLED: "short_disabled",
    K.NOT_FRACTIONABLE: "not_fractionable",
    K.BUYING_POWER: "insufficient_buying_power",
    K.END_OF_DATA: "end_of_data",
}


class SimOutput(NamedTuple):
    """Raw arrays returned by :func:`workbench.backtest._kernels.simulate_nb`."""

    equity: np.ndarray
    positions: np.ndarray
    fills: np.ndarray
    denials: np.ndarray
    last_close: np.ndarray
    cum_borrow: np.ndarray


def _ts(us: np.ndarray) -> pl.Series:
    return pl.Series(np.asarray(us, dtype=np.int64)).cast(TS_DTYPE)


class BacktestResult:
    """Equity, positions, fills, trades, rejections and statistics of one backtest.

    Attributes
    ----------
    config : BacktestConfig
        The configuration the run used.
    symbols : list[str]
        Symbols in grid (column) order.
    periods_per_year : float
        Annualisation factor of :attr:`stats`.
    """

    def __init__(
        self,
        *,
        sim: SimOutput,
        bars: pl.DataFrame,
        close: np.ndarray,
        symbols: list[str],
        ts_us: np.ndarray,
        borrow_row: np.ndarray,
        config: BacktestConfig,
        periods_per_year: float,
        to_2d: Callable[[np.ndarray], np.ndarray] | None = None,
        risk_log: dict[str, pl.DataFrame] | None = None,
    ) -> None:
        self.sim = sim
        self.config = config
        self.symbols = symbols
        self.periods_per_year = periods_per_year
        self._bars = bars
        self._close = close
        self._ts_us = ts_us
        self._borrow_row = borrow_row
        self._to_2d = to_2d
        self._risk_log = risk_log

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"BacktestResult(symbols={len(self.symbols)}, bars={len(self._ts_us)}, "
            f"total_return={s['total_return']:.4f}, sharpe={s['sharpe']:.3f}, "
            f"max_drawdown={s['max_drawdown']:.4f}, n_trades={s['n_trades']:.0f})"
        )

    @cached_property
    def equity(self) -> pl.DataFrame:
        """Per bar time: ``ts, equity, cash, gross_exposure, returns, costs, traded, buy_and_hold``.

        ``equity`` is marked at the close; ``returns`` is the simple return of equity (the first
        against ``initial_cash``); ``costs`` are commission + spread + slippage + borrow paid at the
        row; ``traded`` is the traded notional at reference prices; ``buy_and_hold`` the equity of an
        equal-weight, cost-free buy and hold of every symbol from its first close.
        """
        eq = self.sim.equity
        prev = np.concatenate(([self.config.initial_cash], eq[:-1]))
        n_t = len(eq)
        q = self.sim.positions
        marks = self._marks
        value = np.where(q != 0.0, q * marks, 0.0)
        f = self.sim.fills
        rows = f[:, K.F_ROW].astype(np.int64)
        trade_costs = f[:, K.F_COMM] + f[:, K.F_SPREAD] + f[:, K.F_SLIP]
        borrow = self._borrow_row * np.maximum(-value, 0.0).sum(axis=1)
        return pl.DataFrame(
            {
                "ts": _ts(self._ts_us),
                "equity": eq,
                "cash": eq - value.sum(axis=1),
                "gross_exposure": np.abs(value).sum(axis=1),
                "returns": eq / prev - 1.0,
                "costs": np.bincount(rows, trade_costs, minlength=n_t) + borrow,
                "traded": np.bincount(rows, np.abs(f[:, K.F_QTY]) * f[:, K.F_REF], minlength=n_t),
                "buy_and_hold": self.config.initial_cash * _buy_and_hold_curve(self._close, marks),
            }
        )

    @cached_property
    def _marks(self) -> np.ndarray:
        return _ffill(self._close)

    @cached_property
    def positions(self) -> pl.DataFrame:
        """Long frame ``ts, symbol, shares, value`` at each close (every grid cell)."""
        n_t, n_s = self.sim.positions.shape
        marks = self._marks
        shares = self.sim.positions
        return pl.DataFrame(
            {
                "ts": _ts(np.repeat(self._ts_us, n_s)),
                "symbol": np.tile(np.asarray(self.symbols, dtype=object), n_t).astype(str),
                "shares": shares.ravel(),
                "value": np.where(shares != 0.0, shares * marks, 0.0).ravel(),
            }
        ).sort("symbol", "ts")

    @cached_property
    def fills(self) -> pl.DataFrame:
        """One row per executed order.

        Columns: ``ts`` (fill bar), ``symbol``, ``decision_ts``, ``qty`` (signed shares),
        ``ref_price`` (the fill bar's open or vwap), ``price`` (after spread and slippage),
        ``commission``, ``spread_cost``, ``slippage_cost``, ``position`` (shares after the fill).
        """
        f = self.sim.fills
        rows = f[:, K.F_ROW].astype(np.int64)
        return pl.DataFrame(
            {
                "ts": _ts(self._ts_us[rows]),
                "symbol": pl.Series(self._sym(f[:, K.F_COL]), dtype=pl.String),
                "decision_ts": _ts(self._ts_us[f[:, K.F_DEC].astype(np.int64)]),
                "qty": f[:, K.F_QTY],
                "ref_price": f[:, K.F_REF],
                "price": f[:, K.F_PX],
                "commission": f[:, K.F_COMM],
                "spread_cost": f[:, K.F_SPREAD],
                "slippage_cost": f[:, K.F_SLIP],
                "position": f[:, K.F_POS],
            }
        )

    @property
    def risk_policy_on(self) -> bool:
        """Whether the run traded under a risk policy (``run_backtest(..., risk=...)``)."""
        return self._risk_log is not None

    @property
    def orders(self) -> pl.DataFrame | None:
        """Orders of a risk-policy run (``decision_ts, symbol, qty, target, price, reason,
        equity``); None without a policy."""
        return None if self._risk_log is None else self._risk_log["orders"]

    @property
    def kill_switch(self) -> pl.DataFrame | None:
        """The kill-switch trip of a risk-policy run (``ts, rule, value, limit, reason``; empty
        when it never tripped); None without a policy."""
        return None if self._risk_log is None else self._risk_log["kill_switch"]

    @cached_property
    def rejections(self) -> pl.DataFrame:
        """Orders denied or cut by a risk rule, with the reason.

        Columns: ``decision_ts``, ``symbol``, ``reason`` (``not_tradable``, ``not_shortable``,
        ``short_disabled``, ``not_fractionable``, ``insufficient_buying_power``, ``end_of_data``),
        ``target``, ``requested_qty`` (order before the rule; null for ``end_of_data``) and
        ``allowed_qty`` (order after it). Under a risk policy the reasons include its limits
        (``max_position``, ``sector_cap``, ``correlation``, ``portfolio_heat``, ``max_gross``,
        ``max_net``, ``max_open_positions``, ``opposite_open_order``, ``pattern_day_trader``,
        ``kill_switch``, ``eod_flatten``) and the frame adds ``value``, ``limit`` and
        ``detail`` (see :func:`workbench.risk.policy.denials_frame`).
        """
        if self._risk_log is not None:
            return self._risk_log["rejections"]
        d = self.sim.denials
        return pl.DataFrame(
            {
                "decision_ts": _ts(self._ts_us[d[:, K.D_DEC].astype(np.int64)]),
                "symbol": pl.Series(self._sym(d[:, K.D_COL]), dtype=pl.String),
                "reason": pl.Series([REASONS[int(c)] for c in d[:, K.D_CODE]], dtype=pl.String),
                "target": d[:, K.D_TARGET],
                "requested_qty": pl.Series(d[:, K.D_REQ]).fill_nan(None),
                "allowed_qty": d[:, K.D_ALLOWED],
            }
        )

    @cached_property
    def trades(self) -> pl.DataFrame:
        """Round trips (flat to flat); see :func:`workbench.backtest.ledger.trades_from_fills`."""
        from workbench.backtest.ledger import trades_from_fills

        return trades_from_fills(
            self.sim, self._bars_2d("high"), self._bars_2d("low"), self.symbols, self._ts_us
        )

    @cached_property
    def stats(self) -> dict[str, float]:
        """Statistics with the stable keys of :data:`workbench.backtest.stats.STAT_KEYS`."""
        from workbench.backtest.stats import compute_stats

        eq = self.equity
        return compute_stats(
            equity=eq["equity"].to_numpy(),
            initial_cash=self.config.initial_cash,
            trades=self.trades,
            gross_exposure=eq["gross_exposure"].to_numpy(),
            traded=eq["traded"].to_numpy(),
            costs=eq["costs"].to_numpy(),
            buy_and_hold=eq["buy_and_hold"].to_numpy(),
            periods_per_year=self.periods_per_year,
        )

    def figures(self) -> dict[str, go.Figure]:
        """Return the tearsheet figures (see :func:`workbench.backtest.tearsheet.tearsheet_figures`)."""
        from workbench.backtest.tearsheet import tearsheet_figures

        return tearsheet_figures(self)

    def save_tearsheet(self, path: str | Path, *, title: str = "Backtest") -> Path:
        """Write the tearsheet as one self-contained HTML file and return its path."""
        from workbench.backtest.tearsheet import save_tearsheet

        return save_tearsheet(self, path, title=title)

    def _sym(self, cols: np.ndarray) -> list[str]:
        syms = self.symbols
        return [syms[int(c)] for c in cols]

    def _bars_2d(self, col: str) -> np.ndarray:
        if self._to_2d is None:
            from workbench.backtest.engine import _Grid

            self._to_2d = _Grid.build(self._bars).to_2d
        return self._to_2d(self._bars[col].to_numpy())

    def summary(self) -> dict[str, Any]:
        """Return the stats plus run facts (symbols, bars, periods per year) for logging."""
        return {
            **self.stats,
            "n_symbols": len(self.symbols),
            "n_bars": len(self._ts_us),
            "periods_per_year": self.periods_per_year,
        }


def _ffill(a: np.ndarray) -> np.ndarray:
    n_t = a.shape[0]
    idx = np.where(np.isnan(a), 0, np.arange(n_t)[:, None])
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = a[idx, np.arange(a.shape[1])[None, :]]
    return out


def _buy_and_hold_curve(close: np.ndarray, marks: np.ndarray) -> np.ndarray:
    first_idx = np.argmax(~np.isnan(close), axis=0)
    first = close[first_idx, np.arange(close.shape[1])]
    rel = marks / first[None, :]
    rel = np.where(np.isnan(rel), 1.0, rel)
    return rel.mean(axis=1)
