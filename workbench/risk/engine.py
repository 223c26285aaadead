"""The risk engine of a trading session: the backtest's rules, called once per bar.

:class:`RiskEngine` keeps the same state arrays the backtest kernel keeps and, for each bar,
calls the same kernel functions in the same order (:func:`~workbench.risk._kernel.mark_nb`,
:func:`~workbench.risk._kernel.killswitch_nb`, :func:`~workbench.risk._kernel.decide_row_nb`;
fills through :func:`~workbench.risk._kernel.apply_fill_nb`). Its inputs (ATR, volatility,
moving average, regime, returns) come from :meth:`RiskPolicy.inputs` over a bounded history of
bars, long enough (:meth:`RiskPolicy.history_rows`) that they equal the backtest's. A replayed
session therefore makes the backtest's decisions, orders and denials, with the same reasons.

A kill-switch trip is written to a :class:`~workbench.risk.state.KillSwitchStore` when one is
given, and a halted switch found there at start keeps the engine halted (reduce-only) until
``wb risk rearm``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from workbench.data.assets import AssetFacts
from workbench.errors import SchemaError
from workbench.risk import _kernel as K
from workbench.risk.policy import (
    RULE_NAMES,
    TRIP_NAMES,
    BKfrozen,
    RiskPolicy,
    denials_frame,
    orders_frame,
    reason_text,
    trips_frame,
)

if TYPE_CHECKING:
    from workbench.risk.state import KillSwitchStore

_TRIP_CODES = {v: k for k, v in TRIP_NAMES.items()}


@dataclass(frozen=True, slots=True)
class FillEvent:
    """A broker fill as the risk engine books it (price includes spread and slippage)."""

    symbol: str
    qty: float
    price: float
    commission: float


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_US_PER_DAY = 86_400_000_000


def _us(ts: datetime) -> int:
    """Microseconds since the epoch (naive datetimes are UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - _EPOCH) // _US


class RiskEngine:
    """Per-bar risk decisions of one strategy over a fixed set of symbols.

    Parameters
    ----------
    policy : RiskPolicy
        The policy the backtest used.
    symbols : sequence of str
        The session's symbols (kept sorted: the backtest's column order).
    initial_cash : float
        Starting cash (the account's equity at start).
    assets : mapping, optional
        Asset facts (tradable, shortable, easy to borrow, fractionable).
    store : KillSwitchStore, optional
        Where the kill-switch state persists; a halted state there halts the engine.
    borrow_bps_annual : float
        Borrow charged on shorts at each close (the backtest's ``costs.borrow_bps_annual``), so
        the book's equity is the venue's.
    """

    def __init__(
        self,
        policy: RiskPolicy,
        symbols: Sequence[str],
        *,
        initial_cash: float,
        assets: Mapping[str, AssetFacts] | None = None,
        store: KillSwitchStore | None = None,
        borrow_bps_annual: float = 0.0,
    ) -> None:
        self.policy = policy
        self.borrow_bps_annual = float(borrow_bps_annual)
        self.symbols = sorted(symbols)
        self.col = {s: i for i, s in enumerate(self.symbols)}
        n = len(self.symbols)
        self.rp = policy.params()
        self.s, self.g, self.v = K.new_state(n, float(initial_cash), policy.n_violations)
        self.tradable, self.shortable, self.fractionable = policy.facts(self.symbols, assets)
        self.sector, self.n_sectors = policy.sector_codes(self.symbols)
        self._facts = BKfrozen(self.tradable, self.shortable, self.fractionable, self.sector)
        self._sec = np.zeros(max(self.n_sectors, 1))  # decide_row_nb's scratch
        self._rp_ro = BKfrozen(self.rp)[0]
        self.keep = policy.history_rows()
        cap = 2 * self.keep + 2
        self._ts = np.zeros(cap, dtype=np.int64)
        self._day = np.zeros(cap, dtype=np.int64)
        self._hi = np.full((cap, n), np.nan)
        self._lo = np.full((cap, n), np.nan)
        self._cl = np.full((cap, n), np.nan)
        self._pred = np.full((cap, n), np.nan)
        self._n = 0
        self._out = np.zeros(n)
        self._orders = np.empty((16, K.N_ORDER))
        self._n_ord = 0
        self._den = np.empty((16, K.N_DENIAL))
        self._n_den = 0
        self._order_ts: list[int] = []
        self._den_ts: list[int] = []
        self._last_atr: np.ndarray | None = None
        self._last_ret: np.ndarray | None = None
        self._check_den = np.empty((16, K.N_DENIAL))
        self.trips: list[dict[str, Any]] = []
        self.store = None
        if store is not None:
            self.attach_store(store)

    # ------------------------------------------------------------------ state views

    @property
    def halted(self) -> bool:
        return bool(self.g[K.G_KILL] != 0.0)

    @property
    def equity(self) -> float:
        return float(self.g[K.G_EQ])

    def position(self, symbol: str) -> float:
        return float(self.s[self.col[symbol], K.S_QTY])

    def positions(self) -> dict[str, float]:
        return {s: float(self.s[i, K.S_QTY]) for i, s in enumerate(self.symbols)}

    # ------------------------------------------------------------------ events

    def on_fills(self, fills: Iterable[FillEvent], ts: datetime) -> None:
        """Book this bar's fills (in column order, as the backtest kernel does)."""
        day = int(self.policy.calendar_rows(np.array([_us(ts)]))[0][0])
        for f in sorted(fills, key=lambda f: self.col[f.symbol]):
            K.apply_fill_nb(self.s, self.g, self.col[f.symbol], f.qty, f.price, f.commission, day)

    def release(self, symbol: str, qty: float) -> None:
        """Forget ``qty`` signed shares of pending orders that will not fill (cancelled,
        rejected, expired remainders): the expected position returns to what was filled."""
        j = self.col[symbol]
        self.s[j, K.S_PEND] -= qty
        if abs(self.s[j, K.S_PEND]) < 1e-9:
            self.s[j, K.S_PEND] = 0.0
            self.s[j, K.S_PEND_ROW] = -1.0

    def pending(self, symbol: str) -> float:
        """Signed shares of orders decided but not filled yet."""
        return float(self.s[self.col[symbol], K.S_PEND])

    def atr(self, symbol: str) -> float:
        """The last bar's ATR of ``symbol`` (NaN before the window fills)."""
        if self._last_atr is None:
            return float("nan")
        return float(self._last_atr[self.col[symbol]])

    def attach_store(self, store: KillSwitchStore) -> None:
        """Persist trips from now on; a halt found there halts the engine (reduce-only).

        A restarted session replays its earlier bars without a store (so the replay makes the
        decisions of the first run, trip included) and attaches it when it resumes.
        """
        self.store = store
        state = store.load(self.policy.name)
        if state.halted and not self.halted:
            self.g[K.G_KILL] = 2.0
            self.g[K.G_TRIP_RULE] = _TRIP_CODES.get(state.rule or "", 0)

    def on_bar(
        self, ts: datetime, bars: pl.DataFrame, predictions: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """Take bar ``ts`` (one row per symbol that traded) and decide; return the net order
        (signed shares) per symbol, only where non-zero.

        ``predictions`` maps symbol -> prediction for this bar (missing: no decision, the
        position is held; warm-up bars pass none).
        """
        ts_us = _us(ts)
        if self._n and ts_us <= self._ts[self._n - 1]:
            raise SchemaError(
                f"RiskEngine.on_bar got {ts}, not after the last bar "
                f"{pl.Series([int(self._ts[self._n - 1])]).cast(pl.Datetime('us', 'UTC'))[0]}. "
                "Fix: deliver bars once each, in time order.",
                rule="append only",
            )
        row = self._append(ts_us, bars, predictions or {})
        day, eod = self.policy.calendar_rows(np.array([ts_us]))
        self._day[row] = day[0]
        lo, hi = max(0, self._n - self.keep), self._n  # enough history for equal inputs
        t = row - lo
        atr, vol, sma, ret, regime = self.policy.inputs(
            self._hi[lo:hi], self._lo[lo:hi], self._cl[lo:hi], self._day[lo:hi], from_row=t
        )
        self._last_atr = atr[t].copy()
        self._last_ret = ret
        K.mark_nb(self.s, self.g, self._cl, row, self._borrow_rate(row, ts_us))
        was = self.halted
        K.killswitch_nb(self.s, self.g, t, int(day[0]), self.rp)
        n_ord0, n_den0 = self._n_ord, self._n_den
        # read-only inputs, as inside the backtest kernel: one compiled signature serves both
        inputs = BKfrozen(
            self._pred[lo:hi], self._cl[lo:hi], self._hi[lo:hi], self._lo[lo:hi], atr, vol, sma,
            regime, ret,
        )  # fmt: skip
        n = len(self.symbols)
        self._orders = K.room(self._orders, self._n_ord, K.ORD_PER_ROW * n)
        self._den = K.room(self._den, self._n_den, K.DEN_PER_ORDER * n)
        self._n_ord, self._n_den = K.decide_row_nb(
            t, ts_us, int(day[0]), bool(eod[0]), *inputs, *self._facts, self._sec, self._rp_ro,
            self.s, self.g, self.v, self._out, self._orders, self._n_ord, self._den, self._n_den,
        )  # fmt: skip
        self._order_ts.extend([ts_us] * (self._n_ord - n_ord0))
        self._den_ts.extend([ts_us] * (self._n_den - n_den0))
        if self.halted and not was:
            self._record_trip(ts, ts_us)
        return {s: float(self._out[i]) for i, s in enumerate(self.symbols) if self._out[i] != 0.0}

    def check(self, symbol: str, qty: float, price: float, target: float = float("nan")) -> dict:
        """Pre-trade check of one order of ``qty`` shares at ``price`` against the current book
        (positions and pending orders), without sending or recording it.

        Returns ``{"allowed_qty", "status" ('allowed' | 'cut' | 'denied'), "denials": [{rule,
        value, limit, reason}]}``. The same :func:`~workbench.risk._kernel.limits_nb` the
        decisions use; the last bar's ATR and returns feed the heat and correlation rules.
        """
        j = self.col[symbol]
        if self._last_ret is None:  # no bar yet: nothing to measure heat or correlation on
            self._last_ret = np.full((1, len(self.symbols)), np.nan)
            self._last_atr = np.full(len(self.symbols), np.nan)
        ret = self._last_ret
        d, den, n_den = K.check_order_nb(
            ret.shape[0] - 1, j, float(self.g[K.G_DAY]), target, float(qty), float(price),
            float(self._last_atr[j]), ret, self.tradable, self.shortable, self.fractionable,
            self.sector, self.n_sectors, self.rp, self.s, self.g, self._check_den,
        )  # fmt: skip
        denials = []
        for k in range(n_den):
            rule = RULE_NAMES[int(den[k, 2])]
            value, limit = float(den[k, K.DR_VALUE]), float(den[k, K.DR_LIMIT])
            denials.append(
                {
                    "rule": rule,
                    "value": value,
                    "limit": limit,
                    "reason": reason_text(rule, value, limit),
                }
            )
        status = "allowed" if n_den == 0 else ("denied" if abs(d) < 1e-9 else "cut")
        return {"allowed_qty": float(d), "status": status, "denials": denials}

    # ------------------------------------------------------------------ carried book

    def export_state(self) -> dict[str, Any]:
        """The book as the next session of this strategy starts from it (JSON-able).

        Per symbol the position, average price, stop distance, entry notional, realised PnL,
        held and model targets, last close and entry session; the portfolio's trade history
        (Kelly's statistics, consecutive losses), day trades, the last mark and its session id
        (the next day's daily-loss rule measures from it) and the recent limit violations.
        """
        return {
            "version": 1,
            "policy": self.policy.name,
            "symbols": list(self.symbols),
            "s": {sym: [float(x) for x in self.s[j]] for sym, j in self.col.items()},
            "g": [float(x) for x in self.g],
            "v": [float(x) for x in self.v],
        }

    def restore_state(
        self,
        state: Mapping[str, Any],
        *,
        cash: float,
        positions: Mapping[str, float],
        pending: Mapping[str, float] | None = None,
    ) -> list[str]:
        """Start from the book an earlier session left (:meth:`export_state`), after :meth:`warm`.

        The broker is the truth for ``cash`` and ``positions`` (the session's start snapshot):
        a symbol whose position differs from the recorded one keeps its position and starts its
        entry bookkeeping afresh at its last close (a warning names it). ``pending`` holds the
        signed shares of the orders carried into this session (decided at the last bar before).
        The kill switch is not carried here: its store halts the engine when it is halted.
        Returns the warnings.
        """
        if int(state.get("version", 0)) != 1 or state.get("policy") != self.policy.name:
            raise SchemaError(
                f"the carried risk state is of policy {state.get('policy')!r} (version "
                f"{state.get('version')!r}); this engine runs {self.policy.name!r}. Fix: start "
                "the session flat (a new ledger) or with the strategy that recorded it.",
                rule="carried state",
            )

        def num(x: Any) -> float:
            return float("nan") if x is None else float(x)

        warnings: list[str] = []
        rows = state.get("s", {})
        last_row = float(max(self._n - 1, 0))
        for sym, j in self.col.items():
            rec = rows.get(sym)
            if rec is not None and len(rec) == K.N_S:
                self.s[j] = [num(x) for x in rec]
            q = float(positions.get(sym, 0.0))
            was = float(self.s[j, K.S_QTY])
            if abs(q - was) > 1e-9:
                warnings.append(
                    f"{sym}: the broker holds {q:g} shares, the carried book {was:g}; its entry "
                    "bookkeeping starts afresh at the last close"
                )
                last = self.s[j, K.S_LAST]
                if np.isnan(last) and self._n:
                    last = self._cl[self._n - 1, j]
                self.s[j, K.S_QTY] = q
                self.s[j, K.S_AVG] = 0.0 if q == 0.0 else float(last)
                self.s[j, K.S_ENTRY_NOT] = abs(q) * float(last) if q else 0.0
                self.s[j, K.S_RPNL] = 0.0
                self.s[j, K.S_ENTRY_DAY] = -1.0
            p = float((pending or {}).get(sym, 0.0))
            self.s[j, K.S_PEND] = p
            self.s[j, K.S_PEND_ROW] = last_row if p else -1.0
        g = state.get("g", [])
        if len(g) == K.N_G:
            keep = [K.G_KILL, K.G_TRIP_ROW, K.G_TRIP_RULE, K.G_TRIP_VALUE, K.G_TRIP_LIMIT]
            saved = self.g[keep].copy()
            self.g[:] = [num(x) for x in g]
            self.g[keep] = saved
        v = state.get("v", [])
        if len(v) == len(self.v):
            self.v[:] = [num(x) for x in v]
        self.g[K.G_CASH] = float(cash)
        value = sum(
            self.s[j, K.S_QTY] * self.s[j, K.S_LAST]
            for j in range(len(self.symbols))
            if self.s[j, K.S_QTY] != 0.0
        )
        self.g[K.G_EQ] = float(cash) + float(value)
        self.g[K.G_PREV_EQ] = self.g[K.G_EQ]
        return warnings

    def _borrow_rate(self, row: int, ts_us: int) -> float:
        """Borrow fee fraction of short notional at this bar's close: ACT/360 over the time since
        the previous bar, as the backtest's :func:`~workbench.backtest.costs.borrow_by_row`."""
        if self.borrow_bps_annual <= 0.0:
            return 0.0
        prev = self._ts[row - 1] if row > 0 else ts_us - int(self.policy.timeframe.delta / _US)
        return self.borrow_bps_annual * 1e-4 * ((ts_us - prev) / _US_PER_DAY) / 360.0

    def warm(self, bars: pl.DataFrame) -> None:
        """Feed history bars (before the session) without predictions: inputs warm up."""
        for (ts,), group in bars.sort("ts").group_by(["ts"], maintain_order=True):
            self.on_bar(ts, group)

    # ------------------------------------------------------------------ records

    def orders(self) -> pl.DataFrame:
        """Every order decided so far (same columns as ``BacktestResult.orders``)."""
        o = self._orders[: self._n_ord].copy()
        ts = np.asarray(self._order_ts, dtype=np.int64)
        o[:, K.O_ROW] = np.arange(len(o))
        return orders_frame(o, self.symbols, ts)

    def rejections(self) -> pl.DataFrame:
        """Every denial so far (same columns as ``BacktestResult.rejections``)."""
        d = self._den[: self._n_den].copy()
        ts = np.asarray(self._den_ts, dtype=np.int64)
        d[:, 0] = np.arange(len(d))
        return denials_frame(d, self.symbols, ts)

    def kill_switch(self) -> pl.DataFrame:
        """The trip of this engine, if it tripped (same columns as ``BacktestResult.kill_switch``)."""
        if not self.trips:
            return trips_frame(np.zeros(K.N_G), np.zeros(0, dtype=np.int64))
        return pl.DataFrame(self.trips).select("ts", "rule", "value", "limit", "reason")

    # ------------------------------------------------------------------ internals

    def _append(self, ts_us: int, bars: pl.DataFrame, preds: Mapping[str, float]) -> int:
        cap = len(self._ts)
        if self._n == cap:
            k = self.keep
            for a in (self._ts, self._day, self._hi, self._lo, self._cl, self._pred):
                a[:k] = a[cap - k :]
            self._n = k
        t = self._n
        self._ts[t] = ts_us
        for a in (self._hi, self._lo, self._cl, self._pred):
            a[t] = np.nan
        syms = bars["symbol"].to_list()
        try:
            cols = [self.col[sym] for sym in syms]
        except KeyError as exc:
            raise SchemaError(
                f"RiskEngine got a bar for {exc.args[0]!r}, not one of its symbols "
                f"{self.symbols}. Fix: build the engine with every symbol the session trades.",
                rule="known symbol",
            ) from None
        self._hi[t, cols] = bars["high"].to_numpy()
        self._lo[t, cols] = bars["low"].to_numpy()
        self._cl[t, cols] = bars["close"].to_numpy()
        for sym, j in zip(syms, cols, strict=True):
            p = preds.get(sym)
            if p is not None and np.isfinite(p):
                self._pred[t, j] = p
        self._n = t + 1
        return t

    def _record_trip(self, ts: datetime, ts_us: int) -> None:
        rule = TRIP_NAMES.get(int(self.g[K.G_TRIP_RULE]), "manual")
        value, limit = float(self.g[K.G_TRIP_VALUE]), float(self.g[K.G_TRIP_LIMIT])
        reason = f"{rule}: {value:.4g} >= {limit:.4g}"
        trip = {
            "ts": pl.Series([ts_us]).cast(pl.Datetime("us", "UTC"))[0],
            "rule": rule,
            "value": value,
            "limit": limit,
            "reason": reason,
        }
        self.trips.append(trip)
        if self.store is not None:
            self.store.trip(
                self.policy.name,
                rule=rule,
                reason=reason,
                values={"value": value, "limit": limit, "equity": self.equity},
                ts=trip["ts"],
            )
