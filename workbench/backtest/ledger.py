"""The trade ledger: round trips built from fills, with costs, MAE/MFE and holding time.

A trade runs from flat to flat in one symbol: adds and partial exits belong to it; a fill that
flips the position closes the trade and opens the next one (its commission is split pro rata).
A position still open at the end is a trade with ``is_open = True`` marked at the last close.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from workbench.backtest import _kernels as K
from workbench.data.schema import TS_DTYPE

TRADE_COLUMNS: tuple[str, ...] = (
    "symbol",
    "direction",
    "entry_ts",
    "exit_ts",
    "entry_price",
    "exit_price",
    "size",
    "pnl",
    "gross_pnl",
    "costs",
    "commission",
    "spread_slippage",
    "borrow",
    "return",
    "mae",
    "mfe",
    "holding_time",
    "bars_held",
    "is_open",
)


def trades_from_fills(
    sim: object, high: np.ndarray, low: np.ndarray, symbols: list[str], ts_us: np.ndarray
) -> pl.DataFrame:
    """Return the round trips of a simulation as a frame.

    Parameters
    ----------
    sim : SimOutput
        Kernel output (fills, last closes, cumulative borrow).
    high, low : np.ndarray
        ``[T x N]`` bar highs and lows (NaN where a symbol has no bar), for MAE/MFE.
    symbols : list[str]
        Symbols in column order.
    ts_us : np.ndarray
        ``[T]`` grid times, int64 microseconds (UTC).

    Returns
    -------
    pl.DataFrame
        Columns :data:`TRADE_COLUMNS`: ``direction`` is +1 long / -1 short; prices are average
        execution prices (spread and slippage included; an open trade exits at the last close);
        ``size`` is the total shares entered; ``pnl`` is net of every cost; ``gross_pnl`` before any
        cost; ``costs = commission + spread_slippage + borrow``; ``return = pnl / entry notional``;
        ``mae``/``mfe`` the worst/best price excursion of the bars' lows/highs while open (and the
        exit price), as a fraction of the entry price (``mae <= 0 <= mfe``); ``holding_time`` runs
        from the entry bar's start to the exit bar's start; ``bars_held`` counts grid rows.
    """
    raw = K.trades_nb(
        *K.frozen(
            sim.fills,  # type: ignore[attr-defined]
            high,
            low,
            sim.last_close,  # type: ignore[attr-defined]
            sim.cum_borrow,  # type: ignore[attr-defined]
        ),
        len(ts_us),
    )
    entry = raw[:, K.T_ENTRY_ROW].astype(np.int64)
    exit_ = raw[:, K.T_EXIT_ROW].astype(np.int64)
    pnl = raw[:, K.T_PNL]
    comm, slip, borrow = raw[:, K.T_COMM], raw[:, K.T_SLIP], raw[:, K.T_BORROW]
    costs = comm + slip + borrow
    entry_us = ts_us[entry]
    exit_us = ts_us[exit_]
    df = pl.DataFrame(
        {
            "symbol": pl.Series([symbols[int(c)] for c in raw[:, K.T_COL]], dtype=pl.String),
            "direction": raw[:, K.T_DIR].astype(np.int8),
            "entry_ts": pl.Series(entry_us).cast(TS_DTYPE),
            "exit_ts": pl.Series(exit_us).cast(TS_DTYPE),
            "entry_price": raw[:, K.T_ENTRY_PX],
            "exit_price": raw[:, K.T_EXIT_PX],
            "size": raw[:, K.T_SIZE],
            "pnl": pnl,
            "gross_pnl": pnl + costs,
            "costs": costs,
            "commission": comm,
            "spread_slippage": slip,
            "borrow": borrow,
            "return": pnl / raw[:, K.T_NOTIONAL],
            "mae": raw[:, K.T_MAE],
            "mfe": raw[:, K.T_MFE],
            "holding_time": pl.Series(exit_us - entry_us).cast(pl.Duration("us")),
            "bars_held": exit_ - entry,
            "is_open": raw[:, K.T_OPEN] > 0,
        }
    )
    return df.sort("entry_ts", "symbol")
