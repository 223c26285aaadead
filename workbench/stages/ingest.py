"""Ingest stage: source -> store, coverage and a quality summary, a candlestick of one symbol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import polars as pl

from workbench.config import WorkbenchConfig
from workbench.data.ingest import IngestReport, ingest, to_window
from workbench.data.quality import QualityReport, check_store
from workbench.data.sources.factory import make_source
from workbench.data.store import BarStore


@dataclass
class IngestStageResult:
    """What the ingest notebook shows and hands on."""

    store: BarStore
    report: IngestReport
    coverage: pl.DataFrame
    fingerprint: str
    provenance: dict[str, str]
    quality: QualityReport


def simulator_config(
    cfg: WorkbenchConfig,
    seed: int,
    alpha: float,
    *,
    vwap_reversion: float | None = None,
    trend: float | None = None,
) -> WorkbenchConfig:
    """Return ``cfg`` with the simulator's seed and planted edges replaced (validated): ``alpha``
    (last-bar reversal), and ``vwap_reversion`` and ``trend`` unless None (the config's)."""
    edges = {"vwap_reversion": vwap_reversion, "trend": trend}
    given = {k: v for k, v in edges.items() if v is not None}
    sim = type(cfg.simulator)(
        **{**cfg.simulator.model_dump(), "seed": seed, "alpha": alpha, **given}
    )
    return cfg.model_copy(update={"simulator": sim})


def run_ingest(
    cfg: WorkbenchConfig,
    *,
    source: str,
    symbols: Sequence[str],
    timeframe: str,
    start: str,
    end: str,
    seed: int,
    alpha: float,
    store_root: str = "",
    progress: bool = True,
    vwap_reversion: float | None = None,
    trend: float | None = None,
) -> IngestStageResult:
    """Ingest ``symbols`` into the store and return coverage and the data fingerprint.

    ``seed``, ``alpha``, ``vwap_reversion`` and ``trend`` set the simulator (the synthetic
    source; None keeps the config's edge)."""
    sim_cfg = simulator_config(cfg, seed, alpha, vwap_reversion=vwap_reversion, trend=trend)
    src = make_source(sim_cfg, source)
    store = BarStore(cfg.path(store_root or cfg.store.root), cfg.store.partition)
    rep = ingest(
        src,
        store,
        list(symbols),
        timeframe,
        start,
        end,
        chunk_days=cfg.ingest.chunk_days,
        chunk_symbols=cfg.ingest.chunk_symbols,
        progress=progress,
    )
    lo, hi = to_window(start, end)
    cov = store.coverage().filter(
        pl.col("timeframe") == timeframe, pl.col("symbol").is_in(list(symbols))
    )
    fp = store.fingerprint(list(symbols), timeframe, lo, hi)
    quality = check_store(store, list(symbols), timeframe, start, end, calendar=cfg.data.calendar)
    return IngestStageResult(store, rep, cov, fp, src.provenance(), quality)


def candlestick(bars: pl.DataFrame, symbol: str, *, max_bars: int = 600) -> go.Figure:
    """Return a plotly candlestick (with volume) of the last ``max_bars`` bars of ``symbol``."""
    from plotly.subplots import make_subplots

    df = bars.filter(pl.col("symbol") == symbol).tail(max_bars)
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25], vertical_spacing=0.03
    )
    x = df["ts"].dt.convert_time_zone("America/New_York").to_list()
    fig.add_trace(
        go.Candlestick(
            x=x,
            open=df["open"].to_list(),
            high=df["high"].to_list(),
            low=df["low"].to_list(),
            close=df["close"].to_list(),
            name=symbol,
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(x=x, y=df["volume"].to_list(), name="volume", marker_color="#7f7f7f"), row=2, col=1
    )
    fig.update_layout(
        title=f"{symbol}: last {df.height} bars (New York time)",
        xaxis_rangeslider_visible=False,
        height=520,
        showlegend=False,
    )
    fig.update_xaxes(
        rangebreaks=[{"bounds": ["sat", "mon"]}, {"bounds": [16, 9.5], "pattern": "hour"}]
    )
    return fig
