"""Frames known to satisfy the bar contract, so a consumer need not check them again.

:meth:`workbench.data.store.BarStore.read` validates what it reads and marks the frame with
:func:`mark_validated`; :func:`validated_facts` later tells, in O(columns), whether a frame is
still exactly the frame that was marked. A polars frame carries no attributes, so the mark is a
registry entry keyed by the frame's identity that keeps

- a weak reference to the frame (the entry dies with it; a reused ``id`` never matches), and
- a clone of the frame, which shares its Arrow buffers: they stay alive (an address cannot be
  reused) and shared (polars copies a shared buffer before writing to it), and
- the fingerprint of those buffers: per column its name, dtype and, per chunk, offset, length
  and buffer addresses.

An in-place edit (``df[0, "close"] = -1.0``, ``replace_column``, ``extend``, renaming columns)
gives the frame a different fingerprint, so the mark no longer holds and the consumer validates
again; any derived frame (``with_columns``, ``filter``, ``concat``) is a new, unmarked object.
The mark can only make a check cheaper, never let an unchecked frame through.

A marked frame's entry also holds a small dict of facts derived from the frame (e.g. the symbol
runs the backtest grid needs), valid as long as the mark is.
"""

from __future__ import annotations

import weakref
from typing import Any

import polars as pl
import pyarrow as pa

_Fingerprint = tuple[tuple[str, str, tuple[tuple[int, int, tuple[int, ...]], ...]], ...]


class _Mark:
    __slots__ = ("clone", "facts", "fingerprint", "ref")

    def __init__(self, ref: weakref.ref, clone: pl.DataFrame, fingerprint: _Fingerprint) -> None:
        self.ref = ref
        self.clone = clone
        self.fingerprint = fingerprint
        self.facts: dict[str, Any] = {}


_MARKS: dict[int, _Mark] = {}


def _chunks(s: pl.Series) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    out = []
    for c in pa.chunked_array(s).chunks:  # zero-copy export (Arrow C stream)
        addrs = tuple(0 if b is None else b.address for b in c.buffers())
        out.append((c.offset, len(c), addrs))
    return tuple(out)


def fingerprint(df: pl.DataFrame) -> _Fingerprint:
    """Names, dtypes and Arrow buffer addresses of every column (O(columns x chunks))."""
    return tuple((s.name, str(s.dtype), _chunks(s)) for s in df.get_columns())


def same_buffers(a: pl.Series, b: pl.Series) -> bool:
    """True when two series are views of the same Arrow memory (then their values are equal).

    False says nothing: compare the values.
    """
    if a.dtype != b.dtype or a.len() != b.len():
        return False
    try:
        return _chunks(a) == _chunks(b)
    except (pa.ArrowException, TypeError, ValueError):
        return False


def _forget(key: int, ref: weakref.ref) -> None:
    mark = _MARKS.get(key)
    if mark is not None and mark.ref is ref:
        _MARKS.pop(key, None)


def mark_validated(df: pl.DataFrame) -> dict[str, Any]:
    """Record that ``df`` passed :func:`workbench.data.schema.validate_bars` as it is now.

    Call it only on a frame that just passed the contract. Returns the mark's facts dict (empty
    for a new mark), where consumers may cache values derived from the frame.
    """
    key = id(df)
    mark = _MARKS.get(key)
    fp = fingerprint(df)
    if mark is not None and mark.ref() is df and mark.fingerprint == fp:
        return mark.facts
    ref = weakref.ref(df, lambda r, k=key: _forget(k, r))
    mark = _Mark(ref, df.clone(), fp)
    _MARKS[key] = mark
    return mark.facts


def validated_facts(df: object) -> dict[str, Any] | None:
    """The facts dict of ``df``'s mark when ``df`` is unchanged since it was marked, else None."""
    if not isinstance(df, pl.DataFrame):
        return None
    mark = _MARKS.get(id(df))
    if mark is None or mark.ref() is not df:
        return None
    try:
        same = fingerprint(df) == mark.fingerprint
    except (pa.ArrowException, TypeError, ValueError):
        same = False
    if not same:
        _MARKS.pop(id(df), None)
        return None
    return mark.facts


def is_validated(df: object) -> bool:
    """True when ``df`` carries a valid mark (see :func:`mark_validated`)."""
    return validated_facts(df) is not None
