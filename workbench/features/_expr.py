"""Glue between numba kernels and polars expressions, and shared parameter checks."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from workbench.errors import ConfigError
from workbench.features import _kernels

SETTLE_TOL = 1e-12  # residual weight of pre-history below which a recursive value counts as settled


def did_you_mean(key: str, valid: Any) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest of ``valid``, or an empty string."""
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_int(func: str, name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise a ConfigError naming the fix."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(
            f"The {name!r} parameter of {func} must be an int >= {minimum}. Got {value!r} instead."
        )
    return int(value)


def check_float(
    func: str, name: str, value: Any, *, minimum: float = 0.0, strict: bool = True
) -> float:
    """Return ``value`` as float if it is a finite number above ``minimum``, else raise."""
    ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        op = ">" if strict else ">="
        raise ConfigError(
            f"The {name!r} parameter of {func} must be a finite number {op} {minimum}. "
            f"Got {value!r} instead."
        )
    return value


def check_str(func: str, name: str, value: Any) -> str:
    """Return ``value`` if it is a non-empty string (a column name), else raise."""
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"The {name!r} parameter of {func} must be a column name (non-empty str). "
            f"Got {value!r} instead."
        )
    return value


def check_choice(func: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming them."""
    if value not in choices:
        raise ConfigError(
            f"The {name!r} parameter of {func} must be one of {list(choices)}. Got {value!r} instead."
        )
    return value


def f64(s: pl.Series) -> np.ndarray:
    """Return ``s`` as a contiguous float64 array (nulls become NaN)."""
    if s.dtype != pl.Float64:
        s = s.cast(pl.Float64)
    return np.ascontiguousarray(s.to_numpy())


def empty_f64(n: int) -> np.ndarray:
    """Return an uninitialised float64 array of ``n`` values in Arrow's memory pool.

    A kernel's output column lives here: the pool keeps freed memory for reuse, so a new column
    does not pay the page faults of fresh memory that ``np.empty`` of a large array pays on every
    call (about 2 ns a byte, more than an indicator costs to compute).
    """
    return np.frombuffer(pa.allocate_buffer(8 * n), dtype=np.float64)


def to_series(name: str, values: np.ndarray) -> pl.Series:
    """Return float64 ``values`` as a Float64 series with NaN as null, without copying them.

    The array becomes the series' buffer (an Arrow array over the same memory) and only a
    validity bitmap is computed (vectorised comparison and ``packbits``);
    ``pl.Series(values, nan_to_null=True)`` would copy every value once more.
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    valid = values == values  # False exactly at NaN
    nans = values.shape[0] - int(np.count_nonzero(valid))
    validity = pa.py_buffer(np.packbits(valid, bitorder="little")) if nans else None
    arr = pa.Array.from_buffers(pa.float64(), values.shape[0], [validity, pa.py_buffer(values)])
    return pl.Series(name, arr)


def segments(by: str) -> pl.Expr:
    """Return run ids of ``by``: one id per contiguous block of equal values (a symbol's rows)."""
    return pl.col(by).rle_id()


def kernel(
    fn: Callable[..., object],
    inputs: Sequence[pl.Expr],
    *args: Any,
    by: str,
    name: str,
) -> pl.Expr:
    """Wrap a per-symbol kernel filling one array as a Float64 expression (NaN becomes null).

    ``fn(gid, *inputs, *args, out)`` writes every row of ``out``.
    """

    def run(series: list[pl.Series]) -> pl.Series:
        gid = series[0].to_numpy()
        out = empty_f64(gid.shape[0])
        fn(gid, *(f64(s) for s in series[1:]), *args, out)
        return to_series(name, out)

    return pl.map_batches([segments(by), *inputs], run, return_dtype=pl.Float64).alias(name)


def kernel_struct(
    fn: Callable[..., tuple[np.ndarray, ...]],
    inputs: Sequence[pl.Expr],
    *args: Any,
    fields: Sequence[str],
    by: str,
    name: str,
    post: Callable[[dict[str, np.ndarray], list[np.ndarray]], dict[str, np.ndarray]] | None = None,
) -> pl.Expr:
    """Wrap a kernel returning several arrays as a Struct expression with ``fields``."""
    dtype = pl.Struct(dict.fromkeys(fields, pl.Float64))

    def run(series: list[pl.Series]) -> pl.Series:
        gid = series[0].to_numpy()
        xs = [f64(s) for s in series[1:]]
        arrays = dict(zip(fields, fn(gid, *xs, *args), strict=False))
        if post is not None:
            arrays = post(arrays, xs)
        frame = pl.DataFrame([to_series(f, arrays[f]) for f in fields])
        return frame.to_struct(name)

    return pl.map_batches([segments(by), *inputs], run, return_dtype=dtype).alias(name)


@lru_cache(maxsize=256)
def settle(*retentions: float, tol: float = SETTLE_TOL) -> int:
    """Return the bars a cascade of exponential smoothers needs to forget its initial state.

    Each stage ``k`` keeps ``retentions[k]`` of its previous value and feeds the next stage. Starting
    from a unit error in every stage, iterate until the largest error is below ``tol``.
    """
    err = [1.0] * len(retentions)
    for step in range(1, 1_000_000):
        upstream = 0.0
        for k, r in enumerate(retentions):
            err[k] = r * err[k] + (1.0 - r) * upstream
            upstream = err[k]
        if max(err) <= tol:
            return step
    raise ConfigError(
        f"smoother retentions {retentions} never settle below {tol}; use shorter windows."
    )


def _offset_table(ts_us: np.ndarray, tz: str) -> tuple[int, np.ndarray]:
    hour = 3_600_000_000
    lo = int(ts_us.min()) // hour * hour
    hi = int(ts_us.max()) // hour * hour
    grid = pl.Series("g", np.arange(lo, hi + hour, hour, dtype=np.int64)).cast(
        pl.Datetime("us", "UTC")
    )
    local = grid.dt.convert_time_zone(tz)
    off = (local.dt.base_utc_offset() + local.dt.dst_offset()).dt.total_microseconds()
    return lo, off.cast(pl.Int64).to_numpy()


def local_clock(ts: pl.Series, tz: str) -> np.ndarray:
    """Return local wall-clock epoch microseconds of UTC timestamps ``ts`` in time zone ``tz``.

    Offsets are looked up in an hourly table built once per call, which is exact for zones whose
    transitions fall on whole hours (America/New_York and every US zone) and much faster than
    converting every row.
    """
    us = ts.dt.epoch("us").to_numpy()
    if us.size == 0:
        return us.astype(np.int64)
    lo, offsets = _offset_table(us, tz)
    return _kernels.local_clock(np.ascontiguousarray(us, dtype=np.int64), lo, offsets)


def lag_within(expr: pl.Expr, n: int, by: str) -> pl.Expr:
    """Return ``expr`` shifted ``n`` rows within each contiguous symbol block (null across blocks)."""
    return pl.when(pl.col(by) == pl.col(by).shift(n)).then(expr.shift(n)).otherwise(None)


def bars_per_day(timeframe: Any) -> int:
    """Return the most bars of ``timeframe`` that fit in one calendar day."""
    return max(1, math.ceil(1440 / timeframe.minutes))
