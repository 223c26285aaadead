"""Tearsheet: plotly figures of a backtest and one self-contained HTML file holding them all."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import polars as pl

if TYPE_CHECKING:
    from workbench.backtest.result import BacktestResult

MAX_POINTS = 5000  # curves are thinned to this many points (last value of each bucket)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _thin(df: pl.DataFrame) -> pl.DataFrame:
    if df.height <= MAX_POINTS:
        return df
    step = math.ceil(df.height / MAX_POINTS)
    idx = np.unique(np.r_[np.arange(step - 1, df.height, step), df.height - 1])
    return df[idx]


def equity_figure(result: BacktestResult) -> go.Figure:
    """Return strategy equity against the equal-weight buy and hold of the same symbols."""
    eq = _thin(result.equity)
    fig = go.Figure()
    fig.add_scatter(x=eq["ts"], y=eq["equity"], name="strategy", mode="lines")
    fig.add_scatter(x=eq["ts"], y=eq["buy_and_hold"], name="buy & hold", mode="lines")
    fig.update_layout(title="Equity vs buy & hold", yaxis_title="equity", hovermode="x unified")
    return fig


def drawdown_figure(result: BacktestResult) -> go.Figure:
    """Return the drawdown of equity from its running peak (initial cash is the first peak)."""
    eq = result.equity
    e = eq["equity"].to_numpy()
    peak = np.maximum.accumulate(np.maximum(e, result.config.initial_cash))
    dd = _thin(pl.DataFrame({"ts": eq["ts"], "dd": e / peak - 1.0}))
    fig = go.Figure(go.Scatter(x=dd["ts"], y=dd["dd"], fill="tozeroy", mode="lines", name="dd"))
    fig.update_layout(title="Drawdown", yaxis_tickformat=".1%")
    return fig


def monthly_returns(result: BacktestResult) -> pl.DataFrame:
    """Return compounded returns per calendar month (UTC): ``year, month, return``."""
    eq = result.equity.select("ts", "returns")
    return (
        eq.group_by(pl.col("ts").dt.year().alias("year"), pl.col("ts").dt.month().alias("month"))
        .agg(((pl.col("returns") + 1.0).product() - 1.0).alias("return"))
        .sort("year", "month")
    )


def monthly_heatmap_figure(result: BacktestResult) -> go.Figure:
    """Return a year x month heatmap of compounded monthly returns."""
    m = monthly_returns(result)
    years = sorted(set(m["year"].to_list()))
    z = np.full((len(years), 12), np.nan)
    for y, mo, r in m.iter_rows():
        z[years.index(y), mo - 1] = r
    text = [[("" if np.isnan(v) else f"{v:.1%}") for v in row] for row in z]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(_MONTHS),
            y=[str(y) for y in years],
            text=text,
            texttemplate="%{text}",
            colorscale="RdYlGn",
            zmid=0.0,
        )
    )
    fig.update_layout(title="Monthly returns", yaxis_autorange="reversed")
    return fig


def trade_pnl_figure(result: BacktestResult) -> go.Figure:
    """Return the distribution of closed trades' net PnL."""
    pnl = result.trades.filter(~pl.col("is_open"))["pnl"]
    fig = go.Figure(go.Histogram(x=pnl, nbinsx=50, name="trade pnl"))
    fig.update_layout(title=f"Trade PnL ({pnl.len()} closed trades)", xaxis_title="net pnl")
    return fig


def rolling_sharpe_figure(result: BacktestResult, window: int | None = None) -> go.Figure:
    """Return the annualised Sharpe ratio over a rolling window (default: ~63 sessions of bars)."""
    ppy = result.periods_per_year
    w = window or max(round(ppy / 4), 10)
    eq = result.equity.select(
        "ts",
        (
            pl.col("returns").rolling_mean(w) / pl.col("returns").rolling_std(w) * math.sqrt(ppy)
        ).alias("sharpe"),
    )
    eq = _thin(eq.filter(pl.col("sharpe").is_finite()))
    fig = go.Figure(go.Scatter(x=eq["ts"], y=eq["sharpe"], mode="lines", name="rolling sharpe"))
    fig.update_layout(title=f"Rolling Sharpe ({w} bars)")
    return fig


def tearsheet_figures(result: BacktestResult) -> dict[str, go.Figure]:
    """Return the tearsheet figures by name.

    Parameters
    ----------
    result : BacktestResult
        A finished backtest.

    Returns
    -------
    dict[str, go.Figure]
        ``equity``, ``drawdown``, ``monthly_returns``, ``trade_pnl``, ``rolling_sharpe``.
    """
    return {
        "equity": equity_figure(result),
        "drawdown": drawdown_figure(result),
        "monthly_returns": monthly_heatmap_figure(result),
        "trade_pnl": trade_pnl_figure(result),
        "rolling_sharpe": rolling_sharpe_figure(result),
    }


def _stats_table(stats: dict[str, float]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.6g}</td></tr>" for k, v in stats.items())
    return f"<table class='stats'>{rows}</table>"


def save_tearsheet(result: BacktestResult, path: str | Path, *, title: str = "Backtest") -> Path:
    """Write the statistics and every figure into one self-contained HTML file.

    plotly.js is embedded once, so the file opens offline (and can be logged as an artifact).

    Parameters
    ----------
    result : BacktestResult
        A finished backtest.
    path : str or Path
        Output file; parent folders are created.
    title : str, default "Backtest"
        Page title.

    Returns
    -------
    Path
        The written file.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, fig in enumerate(tearsheet_figures(result).values()):
        parts.append(
            pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0), default_height="420px")
        )
    doc = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table.stats{border-collapse:collapse}"
        "table.stats th{text-align:left;padding:2px 12px 2px 0}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{_stats_table(result.stats)}{''.join(parts)}</body></html>"
    )
    out.write_text(doc, encoding="utf-8")
    return out
