"""The bar contract: one polars schema for OHLCV bars and the checks that enforce it.

Bars are keyed by ``(symbol, ts)``; ``ts`` is the UTC start of the bar, the bar closes at
``ts + timeframe``. Frames that pass :func:`validate_bars` are sorted by ``(symbol, ts)``, unique on
the key, carry exactly the contract columns in contract order and hold no impossible prices.
"""

from __future__ import annotations

import polars as pl

from workbench.errors import SchemaError

TS_DTYPE = pl.Datetime("us", "UTC")

BAR_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "ts": TS_DTYPE,
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "vwap": pl.Float64(),
    "trade_count": pl.Int64(),
}
BAR_COLUMNS: tuple[str, ...] = tuple(BAR_SCHEMA)
KEY: tuple[str, str] = ("symbol", "ts")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
NULLABLE: frozenset[str] = frozenset({"vwap", "trade_count"})

_SAMPLE = 5


def empty_bars() -> pl.DataFrame:
    """Return an empty frame with the bar schema."""
    return pl.DataFrame(schema=BAR_SCHEMA)


def _sample(df: pl.DataFrame, mask: pl.Expr, cols: list[str]) -> tuple[int, str]:
    bad = df.with_row_index("row").filter(mask)
    n = bad.height
    shown = bad.select(["row", *cols]).head(_SAMPLE)
    rows = "; ".join(
        ", ".join(f"{k}={v}" for k, v in rec.items()) for rec in shown.iter_rows(named=True)
    )
    return n, rows


def _reject(df: pl.DataFrame, mask: pl.Expr, rule: str, cols: list[str], fix: str) -> None:
    n, rows = _sample(df, mask, cols)
    if n:
        more = f" (showing first {_SAMPLE})" if n > _SAMPLE else ""
        raise SchemaError(
            f"bars rejected: {n} row(s) violate '{rule}'{more}: {rows}. Fix: {fix}",
            rule=rule,
            n_rows=n,
        )


def reject_rows(df: pl.DataFrame, mask: pl.Expr, rule: str, cols: list[str], fix: str) -> None:
    """Raise :class:`SchemaError` naming ``rule``, the rows where ``mask`` holds and the fix."""
    _reject(df, mask, rule, cols, fix)


def _conform_types(df: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in BAR_COLUMNS if c not in df.columns and c not in NULLABLE]
    if missing:
        raise SchemaError(
            f"bars rejected: missing column(s) {missing}; got columns {df.columns}. "
            f"Fix: provide {list(BAR_COLUMNS)} (vwap and trade_count may be null), "
            "or map your column names when importing (FilesSource(column_map=...)).",
            rule="missing column",
        )
    casts: list[pl.Expr] = []
    for name, want in BAR_SCHEMA.items():
        if name not in df.columns:
            casts.append(pl.lit(None, dtype=want).alias(name))
            continue
        got = df.schema[name]
        if name == "symbol":
            ok = got in (pl.String, pl.Categorical) or isinstance(got, pl.Categorical)
        elif name == "ts":
            if not isinstance(got, pl.Datetime):
                raise SchemaError(
                    f"bars rejected: column 'ts' has type {got}, expected Datetime(time_zone='UTC'). "
                    "Fix: parse it with pl.col('ts').str.to_datetime(time_zone='UTC') "
                    "or convert epoch values with pl.from_epoch.",
                    rule="mistyped column",
                )
            if got.time_zone is None:
                raise SchemaError(
                    "bars rejected: column 'ts' is a naive datetime (no time zone). "
                    "Fix: if the values are UTC use pl.col('ts').dt.replace_time_zone('UTC'); if they "
                    "are exchange-local use .dt.replace_time_zone('America/New_York')"
                    ".dt.convert_time_zone('UTC').",
                    rule="naive timestamp",
                )
            if got.time_zone != "UTC":
                raise SchemaError(
                    f"bars rejected: column 'ts' is in time zone {got.time_zone!r}, expected 'UTC'. "
                    "Fix: pl.col('ts').dt.convert_time_zone('UTC').",
                    rule="non-UTC timestamp",
                )
            ok = True
        elif name == "trade_count":
            ok = got.is_integer() or got == pl.Null
        else:
            ok = got.is_numeric() or (name in NULLABLE and got == pl.Null)
        if not ok:
            raise SchemaError(
                f"bars rejected: column {name!r} has type {got}, expected {want}. "
                f"Fix: cast it, e.g. pl.col({name!r}).cast(pl.{want}) after cleaning bad values.",
                rule="mistyped column",
            )
        casts.append(pl.col(name) if got == want else pl.col(name).cast(want))
    return df.select(casts)


def validate_bars(df: pl.DataFrame) -> pl.DataFrame:
    """Check a frame against the bar contract and return it conformed and sorted.

    Numeric columns are cast to their contract type, missing nullable columns (``vwap``,
    ``trade_count``) are added as nulls, extra columns are dropped, rows are sorted by
    ``(symbol, ts)``. The input is never modified.

    Parameters
    ----------
    df : pl.DataFrame
        Candidate bars.

    Returns
    -------
    pl.DataFrame
        Bars with exactly :data:`BAR_SCHEMA`.

    Raises
    ------
    SchemaError
        Naming the violated rule, how many rows break it, the first few rows and the fix.
    """
    if not isinstance(df, pl.DataFrame):
        raise SchemaError(
            f"bars rejected: expected a polars DataFrame, got {type(df).__name__}. "
            "Fix: convert with pl.from_pandas(df.reset_index()).",
            rule="not a frame",
        )
    out = _conform_types(df)
    rules = _row_rules()
    broken = out.select(
        *(mask.any().alias(str(i)) for i, (mask, *_) in enumerate(rules)), _ts_back()
    ).row(0)
    if any(broken[:-1]):  # name the first broken rule, with its rows and fix
        for mask, rule, cols, fix in rules:
            _reject(out, mask, rule, cols, fix)
    if not broken[-1] and out.get_column("symbol").is_sorted():
        return out.with_columns(pl.col("symbol").set_sorted())  # strictly sorted: unique too
    ordered = out.sort(KEY)
    if ordered.select(_duplicate_key().any()).item():
        _reject(  # rows numbered as the caller passed them
            out,
            pl.struct(KEY).is_duplicated(),
            "unique (symbol, ts)",
            ["symbol", "ts", "close"],
            "deduplicate, e.g. df.unique(subset=['symbol', 'ts'], keep='last'), after deciding "
            "which copy is right.",
        )
    return ordered


def _ts_back() -> pl.Expr:
    """True if within a symbol's run of rows some ``ts`` does not exceed the previous one."""
    sym, ts = pl.col("symbol"), pl.col("ts")
    ahead = (sym != sym.shift()) | (ts > ts.shift())
    return (~ahead.fill_null(True)).any().alias("_back")


def _duplicate_key() -> pl.Expr:
    """True on a row of a frame sorted by (symbol, ts) whose key equals the previous row's."""
    sym, ts = pl.col("symbol"), pl.col("ts")
    return ((sym == sym.shift()) & (ts == ts.shift())).fill_null(False)


def _row_rules() -> list[tuple[pl.Expr, str, list[str], str]]:
    """The contract's row rules in checking order: (mask of bad rows, rule, columns shown, fix)."""
    rules: list[tuple[pl.Expr, str, list[str], str]] = []
    rules.append(
        (
            pl.col("symbol").is_null() | (pl.col("symbol").str.len_chars() == 0),
            "symbol is non-empty",
            ["symbol", "ts"],
            "drop rows without a symbol or fill it in.",
        )
    )
    rules.append(
        (
            pl.col("ts").is_null(),
            "ts is not null",
            ["symbol", "ts"],
            "drop rows without a timestamp.",
        )
    )
    for col in PRICE_COLUMNS:
        rules.append(
            (
                pl.col(col).is_null() | ~pl.col(col).is_finite(),
                f"{col} is finite",
                ["symbol", "ts", col],
                "drop or repair NaN/inf/null prices (e.g. df.drop_nans().drop_nulls()) before writing.",
            )
        )
        rules.append(
            (
                pl.col(col) <= 0,
                f"{col} > 0",
                ["symbol", "ts", col],
                "prices must be strictly positive; remove bad prints or fix the scaling.",
            )
        )
    rules.append(
        (
            pl.col("high") < pl.max_horizontal("open", "close"),
            "high >= max(open, close)",
            ["symbol", "ts", "open", "high", "close"],
            "high must be the bar's maximum; check for swapped columns or a bad print.",
        )
    )
    rules.append(
        (
            pl.col("low") > pl.min_horizontal("open", "close"),
            "low <= min(open, close)",
            ["symbol", "ts", "open", "low", "close"],
            "low must be the bar's minimum; check for swapped columns or a bad print.",
        )
    )
    rules.append(
        (
            pl.col("volume").is_null() | ~pl.col("volume").is_finite(),
            "volume is finite",
            ["symbol", "ts", "volume"],
            "fill missing volume with 0 only if the bar truly traded nothing, else drop the bar.",
        )
    )
    rules.append(
        (
            pl.col("volume") < 0,
            "volume >= 0",
            ["symbol", "ts", "volume"],
            "volume cannot be negative.",
        )
    )
    rules.append(
        (
            pl.col("vwap").is_not_null() & (~pl.col("vwap").is_finite() | (pl.col("vwap") <= 0)),
            "vwap is null or finite and > 0",
            ["symbol", "ts", "vwap"],
            "set unknown vwap to null instead of NaN/0.",
        )
    )
    rules.append(
        (
            pl.col("trade_count").is_not_null() & (pl.col("trade_count") < 0),
            "trade_count >= 0",
            ["symbol", "ts", "trade_count"],
            "trade_count cannot be negative; set unknown counts to null.",
        )
    )
    return rules
