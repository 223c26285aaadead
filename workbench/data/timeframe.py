"""Bar timeframes: the names used in config, the store and the sources."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

import polars as pl

from workbench.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Timeframe:
    """A bar length such as ``1Min`` or ``1Day``.

    ``amount`` units of ``unit`` (``Min``, ``Hour`` or ``Day``). Intraday bars are stamped at their
    UTC start (clock-aligned, as Alpaca does); daily
    bars at midnight America/New_York of the session date, expressed in UTC (as Alpaca does).
    """

    amount: int
    unit: str

    SUPPORTED: ClassVar[tuple[str, ...]] = ("1Min", "5Min", "15Min", "1Hour", "1Day")

    @classmethod
    def parse(cls, value: str | Timeframe) -> Timeframe:
        """Parse ``'5Min'``-style names; raise :class:`ConfigError` naming the valid ones."""
        if isinstance(value, Timeframe):
            return value
        text = str(value)
        if text not in cls.SUPPORTED:
            close = difflib.get_close_matches(text, cls.SUPPORTED, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"timeframe {text!r} is not supported; valid timeframes are {list(cls.SUPPORTED)}.{hint}"
            )
        for unit in ("Min", "Hour", "Day"):
            if text.endswith(unit):
                return cls(int(text[: -len(unit)]), unit)
        raise AssertionError(text)  # pragma: no cover

    @property
    def name(self) -> str:
        return f"{self.amount}{self.unit}"

    @property
    def delta(self) -> timedelta:
        """Nominal bar length (a daily bar is one calendar day; sessions may be shorter)."""
        per = {"Min": timedelta(minutes=1), "Hour": timedelta(hours=1), "Day": timedelta(days=1)}
        return per[self.unit] * self.amount

    @property
    def minutes(self) -> int:
        return int(self.delta.total_seconds() // 60)

    @property
    def is_intraday(self) -> bool:
        return self.unit != "Day"

    @property
    def polars_every(self) -> str:
        """Duration string for polars (``'5m'``, ``'1h'``, ``'1d'``)."""
        return {"Min": f"{self.amount}m", "Hour": f"{self.amount}h", "Day": f"{self.amount}d"}[
            self.unit
        ]

    def off_grid(self, ts: pl.Expr) -> pl.Expr:
        """Return a mask of timestamps that do not start a bar of this timeframe.

        Intraday bars start on a multiple of their length since the UTC epoch (exchange time zones
        are whole hours off UTC); daily bars start at a whole hour (midnight of the exchange's time
        zone, expressed in UTC).
        """
        step = 3_600_000_000 if not self.is_intraday else self.minutes * 60_000_000
        return ts.dt.epoch("us") % step != 0

    def __str__(self) -> str:
        return self.name
