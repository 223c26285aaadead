"""Files source: import bars from CSV or parquet files with a column mapping and time-zone handling."""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import polars as pl

from workbench.data.schema import BAR_COLUMNS, validate_bars
from workbench.data.sources.base import register_source
from workbench.data.timeframe import Timeframe
from workbench.errors import SourceError

_OFFSET = r"(?:Z|[+-]\d{2}:?\d{2})$"  # a trailing UTC offset of an ISO 8601 stamp


@register_source("files")
class FilesSource:
    """Bars from local CSV or parquet files.

    Parameters
    ----------
    paths : str or sequence of str
        Files or glob patterns (``data/import/*.csv``).
    column_map : mapping, optional
        File column -> contract column, e.g. ``{"Date": "ts", "Adj Close": "close"}``.
    timezone : str
        Time zone of naive timestamps in the files (``"America/New_York"`` for exchange-local
        stamps); aware timestamps are converted to UTC whatever this says.
    symbol : str, optional
        Symbol to use when the files have no symbol column (one file per symbol).
    ts_format : str, optional
        strftime format of a text timestamp column (default: ISO 8601 inference).
    """

    name = "files"

    def __init__(
        self,
        paths: str | Sequence[str],
        *,
        column_map: Mapping[str, str] | None = None,
        timezone: str = "UTC",
        symbol: str | None = None,
        ts_format: str | None = None,
    ) -> None:
        pats = [paths] if isinstance(paths, str) else list(paths)
        files = sorted({f for p in pats for f in glob.glob(str(p))})
        if not files:
            raise SourceError(f"no files match {pats}. Fix: check the path or glob pattern.")
        bad = [f for f in files if Path(f).suffix.lower() not in (".csv", ".parquet", ".pq")]
        if bad:
            raise SourceError(f"unsupported file type(s) {bad}; use .csv or .parquet files.")
        self.files = files
        self.column_map = dict(column_map or {})
        unknown = sorted(set(self.column_map.values()) - set(BAR_COLUMNS))
        if unknown:
            raise SourceError(
                f"column_map targets {unknown} are not bar columns; valid targets are {list(BAR_COLUMNS)}."
            )
        self.timezone = timezone
        self.symbol = symbol
        self.ts_format = ts_format
        self._cache: pl.DataFrame | None = None

    def provenance(self) -> dict[str, str]:
        """Describe the files (names and sizes), the mapping and the time zone."""
        sig = ";".join(f"{Path(f).name}:{Path(f).stat().st_size}" for f in self.files)
        return {
            "source": "files",
            "files": sig,
            "timezone": self.timezone,
            "column_map": ",".join(f"{k}->{v}" for k, v in sorted(self.column_map.items())),
        }

    def _read_one(self, path: str) -> pl.DataFrame:
        df = (
            pl.read_parquet(path)
            if not path.lower().endswith(".csv")
            else pl.read_csv(path, try_parse_dates=False)
        )
        df = df.rename({k: v for k, v in self.column_map.items() if k in df.columns})
        if "symbol" not in df.columns:
            if self.symbol is None:
                raise SourceError(
                    f"{path} has no 'symbol' column. Fix: map one with column_map={{'<col>': 'symbol'}} "
                    "or pass symbol='<TICKER>' for a one-symbol file."
                )
            df = df.with_columns(symbol=pl.lit(self.symbol))
        if "ts" not in df.columns:
            raise SourceError(
                f"{path} has no 'ts' column (columns: {df.columns}). Fix: map the timestamp column, "
                "e.g. column_map={'timestamp': 'ts'}."
            )
        ts = df.schema["ts"]
        if ts == pl.String:
            df = df.with_columns(self._parse_text_ts(df["ts"], path).alias("ts"))
            ts = df.schema["ts"]
        elif ts == pl.Date:
            df = df.with_columns(pl.col("ts").cast(pl.Datetime("us")))
            ts = df.schema["ts"]
        if not isinstance(ts, pl.Datetime):
            raise SourceError(
                f"{path}: column 'ts' has type {ts}; expected a date/time or ISO text."
            )
        if ts.time_zone is None:
            df = df.with_columns(
                pl.col("ts").dt.replace_time_zone(self.timezone).dt.convert_time_zone("UTC")
            )
        else:
            df = df.with_columns(pl.col("ts").dt.convert_time_zone("UTC"))
        for col in ("open", "high", "low", "close", "volume", "vwap"):
            if col in df.columns and df.schema[col].is_integer():
                df = df.with_columns(pl.col(col).cast(pl.Float64))
        return df

    def _parse_text_ts(self, text: pl.Series, path: str) -> pl.Series:
        """Parse text stamps: with a UTC offset (``...+00:00``, ``...Z``) as that instant, without
        one in ``timezone``. A file mixing both is refused (its naive stamps are ambiguous)."""
        has_offset = text.str.contains(_OFFSET)
        n_aware = int(has_offset.sum())
        if 0 < n_aware < text.len() - text.null_count():
            row = int(has_offset.not_().arg_true()[0])
            raise SourceError(
                f"{path}: column 'ts' mixes stamps with a UTC offset and without one (row {row + 1}: "
                f"{text[row]!r}). Fix: write every stamp with its offset, or none of them and pass "
                "timezone=..."
            )
        try:
            return text.str.to_datetime(
                self.ts_format, time_unit="us", time_zone="UTC" if n_aware else None
            )
        except pl.exceptions.PolarsError as exc:
            first = str(exc).strip().splitlines()[0]
            raise SourceError(
                f"{path}: column 'ts' is not parseable as timestamps ({first}). Fix: ISO 8601 text "
                "(2024-01-03T14:30:00Z) or pass ts_format='%Y-%m-%d %H:%M:%S'."
            ) from None

    def _all(self) -> pl.DataFrame:
        if self._cache is None:
            frames = [self._read_one(f) for f in self.files]
            cols = [c for c in BAR_COLUMNS if all(c in f.columns for f in frames)]
            self._cache = validate_bars(
                pl.concat([f.select(cols) for f in frames], how="vertical_relaxed")
            )
        return self._cache

    def fetch(
        self, symbols: Sequence[str], timeframe: Timeframe, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Return the files' bars for ``symbols`` with ``start <= ts < end``.

        The files are assumed to hold bars of ``timeframe``; they are not resampled.
        """
        Timeframe.parse(timeframe)
        df = self._all()
        return df.filter(
            pl.col("symbol").is_in(list(symbols)) & (pl.col("ts") >= start) & (pl.col("ts") < end)
        )
