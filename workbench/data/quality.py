"""Data-quality report for bars from any source, run after every ingest.

Checks, each producing findings ``(check, severity, symbol, count, detail, examples)``:

==================  =========  ==================================================================
check               severity   what it finds
==================  =========  ==================================================================
no_data             error      a requested symbol has no bars at all in the window
missing_sessions    error      sessions of the exchange calendar with no bar for a symbol
missing_bars        warning    bars missing inside sessions that have data (info when rare)
off_calendar        info       bars outside regular sessions (extended hours, holidays)
ohlc                error      high/low not bracketing open/close, non-positive or non-finite prices
negative_volume     error      volume < 0
duplicates          error      the same (symbol, ts) more than once
vwap_range          warning    vwap outside [low, high]
zero_volume_run     warning    runs of at least N consecutive zero-volume bars
price_jump          warning    close-to-close log returns beyond N robust sigmas
stale               warning    the last bar is older than the calendar says it should be
==================  =========  ==================================================================

Calendar checks use :mod:`workbench.data.calendar`; crypto pairs (``BTC/USD``) trade around the
clock and get only the 24/7 staleness check. Any ``error`` makes the report ``severe``;
:meth:`QualityReport.raise_if_severe` turns it into a :class:`~workbench.errors.DataQualityError`
carrying the readable text, so a pipeline's ingest step fails with the report as its message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from workbench.data import calendar as cal
from workbench.data.schema import BAR_COLUMNS, BAR_SCHEMA, NULLABLE, TS_DTYPE
from workbench.data.timeframe import Timeframe
from workbench.errors import DataQualityError

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from workbench.data.store import BarStore

SEVERITIES = ("error", "warning", "info")
FINDINGS_SCHEMA: dict[str, pl.DataType] = {
    "check": pl.String(),
    "severity": pl.String(),
    "symbol": pl.String(),
    "count": pl.Int64(),
    "detail": pl.String(),
    "examples": pl.String(),
}
_N_EXAMPLES = 5
_MAD_TO_SIGMA = 1.4826
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True, slots=True)
class QualityThresholds:
    """Limits of the checks.

    Parameters
    ----------
    jump_sigma : float
        A close-to-close log return beyond this many robust sigmas (MAD-based) is a jump.
    min_returns_for_jumps : int
        Fewer returns than this: no jump check for the symbol.
    zero_volume_run : int
        Consecutive zero-volume bars that make a run worth reporting.
    missing_warn_fraction : float
        Missing bars inside sessions above this share of expected bars are a warning, else info.
    stale_warn_bars : int
        The last bar may lag the calendar's last complete bar by this many bars before it is a
        warning (IEX often has no trade in the final minute).
    stale_error_bars : int or None
        Lag in bars that makes staleness an error (None: never).
    """

    jump_sigma: float = 10.0
    min_returns_for_jumps: int = 20
    zero_volume_run: int = 5
    missing_warn_fraction: float = 0.01
    stale_warn_bars: int = 3
    stale_error_bars: int | None = None


def _fmt_ts(v: Any) -> str:
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")
    return str(v)


def _examples(values: Sequence[Any]) -> str:
    shown = [_fmt_ts(v) for v in list(values)[:_N_EXAMPLES]]
    more = f" (+{len(values) - _N_EXAMPLES} more)" if len(values) > _N_EXAMPLES else ""
    return ", ".join(shown) + more


@dataclass(frozen=True)
class QualityReport:
    """Findings of a quality run, with a severity verdict, text, a figure and a raise helper.

    Attributes
    ----------
    findings : pl.DataFrame
        One row per (check, symbol) with :data:`FINDINGS_SCHEMA`, errors first.
    timeframe : str
    symbols : tuple of str
    rows : int
        Bars checked.
    window : tuple
        ``(start, end)`` checked, half-open UTC.
    """

    findings: pl.DataFrame
    timeframe: str
    symbols: tuple[str, ...]
    rows: int
    window: tuple[datetime | None, datetime | None] = field(default=(None, None))

    @property
    def severe(self) -> bool:
        """Return whether any finding is an error."""
        return bool((self.findings["severity"] == "error").any())

    def counts(self) -> dict[str, int]:
        """Return the number of findings per severity."""
        got = dict(self.findings.group_by("severity").len().iter_rows())
        return {s: int(got.get(s, 0)) for s in SEVERITIES}

    def summary(self) -> pl.DataFrame:
        """Return findings counted per check and severity (bars or runs affected)."""
        return (
            self.findings.group_by("check", "severity")
            .agg(symbols=pl.len(), count=pl.col("count").sum())
            .sort(pl.col("severity").replace_strict(_RANK, return_dtype=pl.Int8), "check")
        )

    def to_text(self) -> str:
        """Render the report as readable text, one finding per line, errors first."""
        lo, hi = self.window
        span = f"{_fmt_ts(lo)}..{_fmt_ts(hi)}" if lo and hi else "whole frame"
        c = self.counts()
        head = (
            f"Data quality: {self.timeframe}, {len(self.symbols)} symbol(s), {self.rows:,} bars, "
            f"{span}: {c['error']} error(s), {c['warning']} warning(s), {c['info']} info"
        )
        if self.findings.is_empty():
            return head + "\n  no findings."
        w_check = max(len(x) for x in self.findings["check"].to_list())
        w_sym = max(len(x) for x in self.findings["symbol"].to_list())
        lines = [head]
        for r in self.findings.iter_rows(named=True):
            ex = f" e.g. {r['examples']}" if r["examples"] else ""
            lines.append(
                f"  {r['severity'].upper():<7} {r['check']:<{w_check}}  {r['symbol']:<{w_sym}}  "
                f"{r['detail']}{ex}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def raise_if_severe(self) -> QualityReport:
        """Raise :class:`DataQualityError` with the text report if any finding is an error.

        Returns
        -------
        QualityReport
            ``self``, when nothing is severe (so calls chain).
        """
        if self.severe:
            raise DataQualityError(
                self.to_text() + "\nFix: re-ingest the affected symbols/windows, or inspect the "
                "source; warnings and info do not fail a run."
            )
        return self

    def metrics(self) -> dict[str, float]:
        """Return numbers worth logging to MLflow (findings per severity, bars checked)."""
        return {f"quality_{k}s": float(v) for k, v in self.counts().items()} | {
            "quality_rows": float(self.rows)
        }

    def figure(self) -> go.Figure:
        """Return a plotly bar chart of findings per symbol, one colour per check."""
        import plotly.graph_objects as go

        fig = go.Figure()
        syms = sorted(set(self.findings["symbol"].to_list()) | set(self.symbols))
        for (check, severity), part in self.findings.group_by(
            "check", "severity", maintain_order=True
        ):
            by = dict(zip(part["symbol"].to_list(), part["count"].to_list(), strict=True))
            details = dict(zip(part["symbol"].to_list(), part["detail"].to_list(), strict=True))
            fig.add_trace(
                go.Bar(
                    name=f"{check} ({severity})",
                    x=syms,
                    y=[by.get(s, 0) for s in syms],
                    hovertext=[details.get(s, "") for s in syms],
                )
            )
        c = self.counts()
        fig.update_layout(
            barmode="stack",
            title=f"Data quality {self.timeframe}: {c['error']} errors, {c['warning']} warnings, {c['info']} info",
            xaxis_title="symbol",
            yaxis_title="bars / runs affected",
            legend_title="check",
        )
        return fig


def _as_bound(v: date | datetime | str | None, is_end: bool) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = datetime.fromisoformat(v) if ("T" in v or " " in v) else date.fromisoformat(v)
    if isinstance(v, datetime):
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
    d = datetime(v.year, v.month, v.day, tzinfo=UTC)
    return d + timedelta(days=1) if is_end else d


def _finding(check: str, severity: str, symbol: str, count: int, detail: str, ex: str = "") -> dict:
    return {
        "check": check,
        "severity": severity,
        "symbol": symbol,
        "count": int(count),
        "detail": detail,
        "examples": ex,
    }


def _is_crypto(symbol: str) -> bool:
    return "/" in symbol


# ---------------------------------------------------------------------- row checks


def _row_checks(df: pl.DataFrame) -> list[dict]:
    out = []
    price_bad = pl.any_horizontal(
        [
            pl.col(c).is_null() | ~pl.col(c).is_finite() | (pl.col(c) <= 0)
            for c in ("open", "high", "low", "close")
        ]
    )
    rules = [
        (
            "ohlc",
            "error",
            price_bad
            | (pl.col("high") < pl.max_horizontal("open", "close"))
            | (pl.col("low") > pl.min_horizontal("open", "close"))
            | (pl.col("high") < pl.col("low")),
            "bar(s) with high/low not bracketing open/close or a non-positive/non-finite price",
        ),
        ("negative_volume", "error", pl.col("volume") < 0, "bar(s) with negative volume"),
        (
            "vwap_range",
            "warning",
            pl.col("vwap").is_not_null()
            & (
                (pl.col("vwap") < pl.col("low") * (1 - 1e-9))
                | (pl.col("vwap") > pl.col("high") * (1 + 1e-9))
            ),
            "bar(s) with vwap outside [low, high]",
        ),
    ]
    for check, severity, mask, text in rules:
        bad = df.filter(mask.fill_null(False))
        for (sym,), part in bad.group_by("symbol", maintain_order=True):
            out.append(
                _finding(
                    check,
                    severity,
                    str(sym),
                    part.height,
                    f"{part.height} {text}",
                    _examples(part["ts"].to_list()),
                )
            )
    dup = df.filter(pl.struct("symbol", "ts").is_duplicated())
    for (sym,), part in dup.group_by("symbol", maintain_order=True):
        n = part.height - part["ts"].n_unique()
        out.append(
            _finding(
                "duplicates",
                "error",
                str(sym),
                n,
                f"{n} duplicate (symbol, ts) row(s)",
                _examples(part["ts"].unique().sort().to_list()),
            )
        )
    return out


def _zero_volume_runs(df: pl.DataFrame, min_run: int) -> list[dict]:
    runs = (
        df.with_columns(zero=pl.col("volume") == 0)
        .with_columns(run=pl.col("zero").rle_id().over("symbol"))
        .filter(pl.col("zero"))
        .group_by("symbol", "run", maintain_order=True)
        .agg(first=pl.col("ts").first(), n=pl.len())
        .filter(pl.col("n") >= min_run)
    )
    out = []
    for (sym,), part in runs.group_by("symbol", maintain_order=True):
        ex = [f"{_fmt_ts(t)} x{n}" for t, n in zip(part["first"], part["n"], strict=True)]
        out.append(
            _finding(
                "zero_volume_run",
                "warning",
                str(sym),
                part.height,
                f"{part.height} run(s) of >= {min_run} consecutive zero-volume bars (longest {part['n'].max()})",
                _examples(ex),
            )
        )
    return out


def _price_jumps(df: pl.DataFrame, sigma: float, min_n: int) -> list[dict]:
    r = df.select(
        "symbol", "ts", ret=(pl.col("close").log() - pl.col("close").log().shift(1)).over("symbol")
    ).drop_nulls("ret")
    stats = r.group_by("symbol").agg(
        med=pl.col("ret").median(),
        mad=(pl.col("ret") - pl.col("ret").median()).abs().median(),
        n=pl.len(),
    )
    hits = (
        r.join(stats, on="symbol")
        .filter((pl.col("n") >= min_n) & (pl.col("mad") > 0))
        .with_columns(z=(pl.col("ret") - pl.col("med")).abs() / (pl.col("mad") * _MAD_TO_SIGMA))
        .filter(pl.col("z") > sigma)
        .sort("symbol", "ts")
    )
    out = []
    for (sym,), part in hits.group_by("symbol", maintain_order=True):
        ex = [
            f"{_fmt_ts(t)} ({math.expm1(r_):+.2%})"
            for t, r_ in zip(part["ts"], part["ret"], strict=True)
        ]
        out.append(
            _finding(
                "price_jump",
                "warning",
                str(sym),
                part.height,
                f"{part.height} close-to-close jump(s) beyond {sigma:g} robust sigma",
                _examples(ex),
            )
        )
    return out


# ---------------------------------------------------------------------- calendar checks


def _calendar_checks(
    df: pl.DataFrame,
    symbols: Sequence[str],
    tf: Timeframe,
    lo: datetime,
    hi: datetime,
    now: datetime,
    calendar: str,
    th: QualityThresholds,
) -> list[dict]:
    done = cal.last_expected_bar(tf, now, calendar)
    expected = cal.expected_bars(tf, lo, hi, calendar)
    expected = expected.filter(expected <= done) if done is not None else expected.clear()
    tz = str(cal.get_calendar(calendar).tz)
    exp = pl.DataFrame({"ts": expected}).with_columns(
        session=pl.col("ts").dt.convert_time_zone(tz).dt.date()
    )
    out: list[dict] = []
    for sym in symbols:
        have = df.filter(pl.col("symbol") == sym).select("ts")
        if have.is_empty():
            continue
        missing = exp.join(have, on="ts", how="anti")
        if missing.height:
            present_sessions = exp.join(have, on="ts", how="semi")["session"].unique()
            whole = missing.filter(~pl.col("session").is_in(present_sessions.implode()))
            lost = whole["session"].unique().sort()
            if lost.len():
                out.append(
                    _finding(
                        "missing_sessions",
                        "error",
                        sym,
                        lost.len(),
                        f"{lost.len()} session(s) of the {calendar} calendar without any bar",
                        _examples(lost.to_list()),
                    )
                )
            inner = missing.filter(pl.col("session").is_in(present_sessions.implode()))
            if inner.height:
                frac = inner.height / max(exp.height, 1)
                out.append(
                    _finding(
                        "missing_bars",
                        "warning" if frac > th.missing_warn_fraction else "info",
                        sym,
                        inner.height,
                        f"{inner.height} bar(s) missing inside sessions with data ({frac:.2%} of {exp.height} expected)",
                        _examples(inner["ts"].to_list()),
                    )
                )
        extra = have.join(
            pl.DataFrame({"ts": cal.expected_bars(tf, lo, hi, calendar)}), on="ts", how="anti"
        )
        if extra.height:
            out.append(
                _finding(
                    "off_calendar",
                    "info",
                    sym,
                    extra.height,
                    f"{extra.height} bar(s) outside regular sessions (extended hours or a holiday)",
                    _examples(extra["ts"].to_list()),
                )
            )
        out.extend(_stale(sym, have["ts"].max(), exp["ts"], done, tf, th))
    return out


def _stale(
    sym: str,
    last: Any,
    expected: pl.Series,
    done: datetime | None,
    tf: Timeframe,
    th: QualityThresholds,
) -> list[dict]:
    if done is None or last is None or last >= done:
        return []
    lag = int((expected > last).sum()) if expected.len() else 0
    if lag == 0:
        return []
    severity = (
        "error"
        if th.stale_error_bars is not None and lag >= th.stale_error_bars
        else "warning"
        if lag > th.stale_warn_bars
        else "info"
    )
    return [
        _finding(
            "stale",
            severity,
            sym,
            lag,
            f"last bar {_fmt_ts(last)} is {lag} {tf.name} bar(s) behind the last complete bar {_fmt_ts(done)}",
        )
    ]


def _crypto_stale(
    df: pl.DataFrame, sym: str, tf: Timeframe, now: datetime, th: QualityThresholds
) -> list[dict]:
    last = df.filter(pl.col("symbol") == sym)["ts"].max()
    if last is None:
        return []
    step = tf.delta
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    done = epoch + ((now - epoch) // step) * step - step
    lag = int((done - last) // step) if done > last else 0  # type: ignore[operator]
    if lag <= 0:
        return []
    expected = pl.Series([last + step * (i + 1) for i in range(lag)], dtype=TS_DTYPE)  # type: ignore[operator]
    return _stale(sym, last, expected, done, tf, th)


# ---------------------------------------------------------------------- entry points


def check_quality(
    bars: pl.DataFrame,
    timeframe: str | Timeframe,
    *,
    symbols: Sequence[str] | None = None,
    start: date | datetime | str | None = None,
    end: date | datetime | str | None = None,
    now: datetime | None = None,
    calendar: str = cal.DEFAULT_CALENDAR,
    thresholds: QualityThresholds | None = None,
) -> QualityReport:
    """Check bars from any source and return a :class:`QualityReport`.

    Parameters
    ----------
    bars : pl.DataFrame
        Bars with the contract columns (not modified; need not be validated).
    timeframe : str or Timeframe
    symbols : sequence of str, optional
        Symbols that should be present (default: those in ``bars``); absent ones are ``no_data``.
    start, end : date, datetime or ISO string, optional
        Window checked against the calendar (dates inclusive, datetimes half-open; default: the
        sessions spanned by the bars).
    now : datetime, optional
        Wall time for staleness and for ignoring bars not complete yet (default: now, UTC).
    calendar : str
        exchange_calendars code of the stock symbols.
    thresholds : QualityThresholds, optional

    Returns
    -------
    QualityReport
    """
    tf = Timeframe.parse(timeframe)
    th = thresholds or QualityThresholds()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    missing = [
        pl.lit(None, dtype=BAR_SCHEMA[c]).alias(c) for c in NULLABLE if c not in bars.columns
    ]
    df = bars.with_columns(missing).select(BAR_COLUMNS).sort("symbol", "ts")
    syms = list(
        dict.fromkeys(symbols if symbols is not None else df["symbol"].unique().sort().to_list())
    )
    lo, hi = _as_bound(start, False), _as_bound(end, True)
    if df.height:
        first, last = df["ts"].min(), df["ts"].max()
        lo = lo or datetime(first.year, first.month, first.day, tzinfo=UTC)  # type: ignore[union-attr]
        hi = hi or datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)  # type: ignore[union-attr]
    findings: list[dict] = []
    present = set(df["symbol"].unique().to_list())
    for s in syms:
        if s not in present:
            findings.append(_finding("no_data", "error", s, 0, "no bars at all in the window"))
    findings += _row_checks(df)
    findings += _zero_volume_runs(df, th.zero_volume_run)
    findings += _price_jumps(df, th.jump_sigma, th.min_returns_for_jumps)
    if lo is not None and hi is not None:
        ref = min(now, hi)
        stocks = [s for s in syms if s in present and not _is_crypto(s)]
        if stocks:
            findings += _calendar_checks(df, stocks, tf, lo, hi, ref, calendar, th)
        for s in syms:
            if s in present and _is_crypto(s):
                findings += _crypto_stale(df, s, tf, ref, th)
    frame = (
        pl.DataFrame(findings, schema=FINDINGS_SCHEMA)
        if findings
        else pl.DataFrame(schema=FINDINGS_SCHEMA)
    )
    frame = (
        frame.with_columns(_o=pl.col("severity").replace_strict(_RANK, return_dtype=pl.Int8))
        .sort("_o", "check", "symbol")
        .drop("_o")
    )
    return QualityReport(frame, tf.name, tuple(syms), df.height, (lo, hi))


def check_store(
    store: BarStore,
    symbols: Sequence[str],
    timeframe: str | Timeframe,
    start: date | datetime | str,
    end: date | datetime | str,
    **kwargs: Any,
) -> QualityReport:
    """Read a window from a store and check it (what runs after an ingest).

    Parameters
    ----------
    store : BarStore
    symbols : sequence of str
    timeframe : str or Timeframe
    start, end : date, datetime or ISO string
        Dates are inclusive sessions, as for ``wb ingest``.
    **kwargs
        Passed to :func:`check_quality` (``now``, ``calendar``, ``thresholds``).
    """
    lo, hi = _as_bound(start, False), _as_bound(end, True)
    bars = store.read(symbols, timeframe, lo, hi, strict=False)
    return check_quality(bars, timeframe, symbols=symbols, start=lo, end=hi, **kwargs)
