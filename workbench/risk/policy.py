"""The risk policy a strategy trades under: decision, sizing, limits, kill switch, EOD flatten.

:class:`RiskPolicy` is resolved once from config (thresholds, per-bar volatility target, sector
codes, calendar) into the numbers the kernel reads. The backtest (``run_backtest(...,
risk=policy)``) runs it bar by bar inside :func:`workbench.risk._kernel.simulate_risk_nb`; the
trading session's :class:`workbench.risk.engine.RiskEngine` calls the same kernel functions once
per bar. One implementation of every rule, two callers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from workbench.config import (
    DecisionConfig,
    ExposureCaps,
    KillSwitchConfig,
    LimitsConfig,
    SizingConfig,
    StrategyConfig,
    WorkbenchConfig,
)
from workbench.data.assets import AssetFacts, facts_for
from workbench.data.calendar import session_bounds_us
from workbench.data.schema import TS_DTYPE
from workbench.data.timeframe import Timeframe
from workbench.errors import ConfigError
from workbench.risk import _kernel as K
from workbench.risk.decision import DecisionPolicy
from workbench.risk.sizing import periods_per_year, sizing_params

RULE_NAMES: dict[int, str] = {
    1: "not_tradable",
    2: "not_shortable",
    3: "short_disabled",
    4: "not_fractionable",
    5: "insufficient_buying_power",
    6: "end_of_data",
    K.MAX_POSITION: "max_position",
    K.MAX_OPEN: "max_open_positions",
    K.SECTOR: "sector_cap",
    K.CORRELATION: "correlation",
    K.HEAT: "portfolio_heat",
    K.GROSS: "max_gross",
    K.NET: "max_net",
    K.OPEN_ORDER: "opposite_open_order",
    K.PDT: "pattern_day_trader",
    K.KILL_SWITCH: "kill_switch",
    K.EOD_FLATTEN: "eod_flatten",
}
TRIP_NAMES: dict[int, str] = {
    K.TRIP_DAILY_LOSS: "daily_loss",
    K.TRIP_DRAWDOWN: "max_drawdown",
    K.TRIP_CONSECUTIVE: "consecutive_losses",
    K.TRIP_VIOLATIONS: "violations",
    K.TRIP_HEAT: "heat_emergency",
}
ORDER_REASONS = {K.ORDER_MODEL: "model", K.ORDER_EOD: "eod_flatten", K.ORDER_KILL: "kill_switch"}
_MEASURES = {
    "max_position": "position / equity",
    "max_open_positions": "open positions",
    "sector_cap": "sector exposure / equity",
    "correlation": "correlation with a held position",
    "portfolio_heat": "heat / equity",
    "max_gross": "gross exposure / equity",
    "max_net": "net exposure / equity",
    "insufficient_buying_power": "gross exposure / equity",
    "opposite_open_order": "working order qty",
    "pattern_day_trader": "day trades in 5 sessions",
}


def reason_text(rule: str, value: float, limit: float) -> str:
    """Human reason of a denial, e.g. ``max_position: position / equity 0.25 > 0.2``."""
    if rule == "kill_switch":
        return "kill switch halted: entries denied until `wb risk rearm`"
    if rule == "eod_flatten":
        return "end-of-day window: entries denied, positions flattened"
    if rule == "end_of_data":
        return "decided on the last bar: never filled"
    if rule in ("not_tradable", "not_fractionable"):
        return rule.replace("_", " ")
    if rule in ("short_disabled", "not_shortable"):
        return f"{rule.replace('_', ' ')}: a short is not allowed"
    what = _MEASURES.get(rule, "value")
    if value is None or not math.isfinite(value):
        return f"{rule}: {what} not measurable yet (no ATR/returns), entry denied"
    return f"{rule}: {what} {value:.4g} > {limit:.4g}"


@dataclass(frozen=True)
class RiskPolicy:
    """Everything a strategy's orders must pass, resolved for one timeframe and calendar.

    Build with :meth:`from_config` (a configured strategy) or :meth:`from_strategy`.
    """

    name: str
    strategy_type: str
    decision: DecisionPolicy
    sizing: SizingConfig
    limits: LimitsConfig
    killswitch: KillSwitchConfig
    exposure: ExposureCaps
    eod_flatten_minutes: float | None
    timeframe: Timeframe
    calendar: str = "XNYS"
    allow_short: bool = True
    fractional: bool = False
    sectors: Mapping[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls,
        cfg: WorkbenchConfig,
        strategy: str,
        *,
        timeframe: str | Timeframe | None = None,
        train_predictions: np.ndarray | None = None,
        sectors: Mapping[str, str] | None = None,
        decision: DecisionPolicy | None = None,
    ) -> RiskPolicy:
        """Resolve the risk policy of a configured strategy.

        Parameters
        ----------
        cfg : WorkbenchConfig
            The loaded config (the strategy, backtest share rules, exposure caps by type).
        strategy : str
            Strategy name.
        timeframe : str, optional
            Bar timeframe (default ``data.timeframe``): sets the per-bar volatility target and
            the end-of-day window.
        train_predictions : array, optional
            The model's predictions on its training rows (``decision.method: quantile``).
        sectors : mapping, optional
            Symbol -> sector; the strategy's ``risk.limits.sectors`` win over it.
        decision : DecisionPolicy, optional
            Already-resolved thresholds (e.g. the ones a model version was validated with).
        """
        strat = cfg.strategy(strategy)
        return cls.from_strategy(
            strat,
            name=strategy,
            timeframe=timeframe or cfg.data.timeframe,
            exposure=cfg.risk.exposure[strat.type],
            calendar=cfg.data.calendar,
            allow_short=cfg.backtest.allow_short,
            fractional=cfg.backtest.fractional,
            train_predictions=train_predictions,
            sectors=sectors,
            decision=decision,
        )

    @classmethod
    def from_strategy(
        cls,
        strat: StrategyConfig,
        *,
        name: str = "strategy",
        timeframe: str | Timeframe = "5Min",
        exposure: ExposureCaps | None = None,
        calendar: str = "XNYS",
        allow_short: bool = True,
        fractional: bool = False,
        train_predictions: np.ndarray | None = None,
        sectors: Mapping[str, str] | None = None,
        decision: DecisionPolicy | None = None,
    ) -> RiskPolicy:
        """Resolve a policy from a strategy config (see :meth:`from_config`)."""
        tf = Timeframe.parse(timeframe)
        eod = strat.risk.eod_flatten_minutes if strat.type == "intraday" else None
        if eod is not None and not tf.is_intraday:
            eod = None  # daily bars cannot be flattened within the session
        merged = {**(sectors or {}), **strat.risk.limits.sectors}
        return cls(
            name=name,
            strategy_type=strat.type,
            decision=decision or DecisionPolicy.from_config(strat.decision, train_predictions),
            sizing=strat.sizing,
            limits=strat.risk.limits,
            killswitch=strat.risk.killswitch,
            exposure=exposure or ExposureCaps(),
            eod_flatten_minutes=eod,
            timeframe=tf,
            calendar=calendar,
            allow_short=allow_short,
            fractional=fractional,
            sectors=merged,
        )

    @classmethod
    def permissive(
        cls,
        decision: DecisionConfig | None = None,
        sizing: SizingConfig | None = None,
        *,
        timeframe: str | Timeframe = "5Min",
        allow_short: bool = True,
    ) -> RiskPolicy:
        """A policy with every limit, trip and flatten off: decisions and sizing only."""
        off = LimitsConfig(max_position=None, leverage=None)
        return cls(
            name="permissive",
            strategy_type="swing",
            decision=DecisionPolicy.from_config(decision or DecisionConfig()),
            sizing=sizing or SizingConfig(),
            limits=off,
            killswitch=KillSwitchConfig(),
            exposure=ExposureCaps(max_gross=None, max_net=None),
            eod_flatten_minutes=None,
            timeframe=Timeframe.parse(timeframe),
            allow_short=allow_short,
        )

    # ------------------------------------------------------------------ resolved numbers

    @property
    def periods_per_year(self) -> float:
        return periods_per_year(self.timeframe.minutes, self.timeframe.is_intraday)

    def params(self) -> np.ndarray:
        """Return the kernel's parameter vector (NaN = rule off)."""
        rp = np.full(K.N_R, np.nan)
        d, lim, ks = self.decision, self.limits, self.killswitch
        rp[K.R_LONG], rp[K.R_SHORT] = d.long, d.short
        rp[K.R_PROBABILITY] = float(d.config.method == "probability")
        rp[K.R_TREND] = float(d.config.trend_filter is not None)
        rp[K.R_ALLOW_SHORT] = float(self.allow_short)
        rp[K.R_FRACTIONAL] = float(self.fractional)
        rp[K.R_EVERY_BAR] = 0.0
        sizing_params(self.sizing, rp, self.periods_per_year)

        def opt(v: float | int | None) -> float:
            return math.nan if v is None else float(v)

        rp[K.R_MAX_POS] = opt(lim.max_position)
        rp[K.R_MAX_OPEN] = opt(lim.max_open_positions)
        rp[K.R_SECTOR_CAP] = opt(lim.sector_cap)
        rp[K.R_MAX_CORR] = opt(lim.max_correlation)
        rp[K.R_CORR_WIN] = float(lim.correlation_window)
        rp[K.R_HEAT_MAX] = opt(lim.heat_max)
        rp[K.R_LEVERAGE] = opt(lim.leverage)
        rp[K.R_MAX_GROSS] = opt(self.exposure.max_gross)
        rp[K.R_MAX_NET] = opt(self.exposure.max_net)
        rp[K.R_PDT] = float(lim.pdt)
        rp[K.R_DAILY_LOSS] = opt(ks.daily_loss)
        rp[K.R_MAX_DD] = opt(ks.max_drawdown)
        rp[K.R_CONSEC] = opt(ks.consecutive_losses)
        rp[K.R_MAX_VIOL] = opt(ks.max_violations)
        rp[K.R_VIOL_WIN_US] = ks.violation_window_minutes * 60e6
        rp[K.R_HEAT_EMERG] = opt(ks.heat_emergency)
        return rp

    @property
    def n_violations(self) -> int:
        return int(self.killswitch.max_violations or 1)

    def needs(self) -> tuple[bool, bool, bool]:
        """Which inputs the rules read: (ATR, volatility, moving average)."""
        s = self.sizing
        atr = (
            s.method in ("atr_risk", "kelly")
            or self.limits.heat_max is not None
            or self.killswitch.heat_emergency is not None
        )
        vol = s.method == "vol_target" or s.regime is not None
        return atr, vol, self.decision.config.trend_filter is not None

    def atr_on_demand(self) -> bool:
        """Whether only order rows read the ATR (the heat limit and the stops): the backtest then
        measures it from the bars at those rows instead of on every bar."""
        return self.needs()[0] and self.sizing.method not in ("atr_risk", "kelly")

    def vol_window(self) -> int:
        s = self.sizing
        return (
            s.regime.window if (s.regime is not None and s.method != "vol_target") else s.vol_window
        )

    def history_rows(self) -> int:
        """Bars of history a session must keep for its inputs to equal the backtest's."""
        s = self.sizing
        per_day = math.ceil(390 / self.timeframe.minutes) if self.timeframe.is_intraday else 1
        rows = max(
            s.atr_window + 1,
            self.vol_window() + 2,
            self.decision.config.trend_filter or 1,
            self.limits.correlation_window + 1,
        )
        if s.regime is not None:
            rows = max(rows, s.regime.lookback + s.regime.window + 2 + per_day)
        return rows + per_day

    def sector_codes(self, symbols: Sequence[str]) -> tuple[np.ndarray, int]:
        """Return each symbol's sector index (-1 none) and the number of sectors.

        Raises
        ------
        ConfigError
            With ``sector_cap`` set, when a symbol has no sector.
        """
        if self.limits.sector_cap is None:
            return np.full(len(symbols), -1, dtype=np.int64), 0
        missing = [s for s in symbols if s not in self.sectors]
        if missing:
            raise ConfigError(
                f"risk.limits.sector_cap = {self.limits.sector_cap} needs a sector for every "
                f"symbol; missing for {missing[:5]}{' ...' if len(missing) > 5 else ''} (known: "
                f"{sorted(self.sectors)[:5]}). Fix: add them under risk.limits.sectors "
                "(symbol: sector), pass sectors= from the asset facts, or drop sector_cap."
            )
        names = sorted({self.sectors[s] for s in symbols})
        index = {n: i for i, n in enumerate(names)}
        return np.array([index[self.sectors[s]] for s in symbols], dtype=np.int64), len(names)

    def calendar_rows(self, ts_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return per bar start: the session index (day id) and the end-of-day flatten flag.

        A bar's decision is taken at its end (``ts + timeframe``); it is in the flatten window
        when that is at or after ``session close - eod_flatten_minutes`` of its session (early
        closes from the calendar), so positions are flat by then when the window is at least one
        bar long.
        """
        _, closes = session_bounds_us(self.calendar)
        ts = np.ascontiguousarray(ts_us, dtype=np.int64)
        want = self.eod_flatten_minutes is not None
        tf_us = int(self.timeframe.delta.total_seconds() * 1e6)
        eod_us = int(self.eod_flatten_minutes * 60e6) if want else 0
        return K.calendar_rows_nb(*BKfrozen(ts, closes), tf_us, eod_us, want)

    def facts(
        self, symbols: Sequence[str], assets: Mapping[str, AssetFacts] | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tradable, shortable (shortable and easy to borrow) and fractionable flags."""
        f = facts_for(list(symbols), assets)
        tradable = np.array([f[s].tradable for s in symbols], dtype=np.bool_)
        shortable = np.array([f[s].shortable and f[s].easy_to_borrow for s in symbols], np.bool_)
        fractionable = np.array([f[s].fractionable for s in symbols], dtype=np.bool_)
        return tradable, shortable, fractionable

    def inputs(
        self,
        high: np.ndarray,
        low: np.ndarray,
        close: np.ndarray,
        day: np.ndarray,
        from_row: int = 0,
        *,
        compact: bool = False,
    ) -> tuple[np.ndarray, ...]:
        """ATR, volatility, moving average, returns and the regime multiplier on a grid.

        With ``compact`` an input no rule of the policy reads on every bar is a single row of NaN
        (the backtest kernel reads inputs through ``_kernel._cell``; an ATR read only by the heat
        rule it measures at order rows, see :meth:`atr_on_demand`); otherwise every one is a grid.
        """
        need_atr, need_vol, need_sma = self.needs()
        if compact and self.atr_on_demand():
            need_atr = False
        s = self.sizing
        # regimes read the volatility of past rows too: compute it over the whole window then
        first = 0 if s.regime is not None else from_row
        atr, vol, sma, ret = K.risk_inputs_nb(
            *BKfrozen(high, low, close),
            s.atr_window,
            self.vol_window(),
            self.decision.config.trend_filter or 2,
            need_atr,
            need_vol,
            need_sma,
            self.limits.max_correlation is not None,
            first,
            compact,
        )
        if s.regime is None:
            regime = np.ones((1, 1))
        else:
            r = s.regime
            regime = K.regime_nb(
                vol, day, r.lookback, r.low_pct, r.high_pct, *r.multipliers, from_row
            )
        return atr, vol, sma, ret, regime

    # ------------------------------------------------------------------ the backtest path

    def simulate(
        self,
        *,
        symbols: list[str],
        ts_us: np.ndarray,
        ref: np.ndarray,
        close: np.ndarray,
        high: np.ndarray,
        low: np.ndarray,
        pred: np.ndarray,
        cost_arrays: Any,
        params: np.ndarray,
        assets: Mapping[str, AssetFacts] | None,
        initial_cash: float,
    ) -> tuple[tuple, dict[str, pl.DataFrame]]:
        """Run the kernel on a grid; return the backtest's arrays and the risk log frames.

        Called by :func:`workbench.backtest.run_backtest` with ``risk=`` (not meant to be called
        directly).
        """
        day, eod = self.calendar_rows(ts_us)
        atr, vol, sma, ret, regime = self.inputs(high, low, close, day, compact=True)
        tradable, shortable, fractionable = self.facts(symbols, assets)
        sector, n_sectors = self.sector_codes(symbols)
        s, g, v = K.new_state(len(symbols), initial_cash, self.n_violations)
        rp = self.params()
        if self.atr_on_demand():
            rp[K.R_ATR_ON_DEMAND] = self.sizing.atr_window
        out = K.simulate_risk_nb(
            *BKfrozen(ref, close, high, low, pred, atr, vol, sma, regime, ret),
            *BKfrozen(cost_arrays.half_spread, cost_arrays.sigma, cost_arrays.volume),
            *BKfrozen(cost_arrays.slip_row, cost_arrays.borrow_row, ts_us, day, eod),
            *BKfrozen(tradable, shortable, fractionable, sector),
            n_sectors,
            *BKfrozen(params, rp),
            s,
            g,
            v,
        )
        equity, positions, fills, den, last_close, cum_borrow, orders = out
        log = {
            "orders": orders_frame(orders, symbols, ts_us),
            "rejections": denials_frame(den, symbols, ts_us),
            "kill_switch": trips_frame(g, ts_us),
        }
        return (equity, positions, fills, den[:, :6].copy(), last_close, cum_borrow), log

    def describe(self) -> dict[str, Any]:
        """Return the policy as plain data (for run parameters and the notebook)."""
        return {
            "strategy": self.name,
            "type": self.strategy_type,
            "timeframe": self.timeframe.name,
            "decision": {**self.decision.config.model_dump(), **self.decision.thresholds()},
            "sizing": self.sizing.model_dump(),
            "limits": self.limits.model_dump(),
            "exposure": self.exposure.model_dump(),
            "killswitch": self.killswitch.model_dump(),
            "eod_flatten_minutes": self.eod_flatten_minutes,
        }


def BKfrozen(*arrays: Any) -> tuple:
    from workbench.backtest._kernels import frozen

    return frozen(*(np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a for a in arrays))


def _ts(us: np.ndarray) -> pl.Series:
    return pl.Series(np.asarray(us, dtype=np.int64)).cast(TS_DTYPE)


def orders_frame(orders: np.ndarray, symbols: Sequence[str], ts_us: np.ndarray) -> pl.DataFrame:
    """Orders the policy sent: ``decision_ts, symbol, qty, target, price, reason, equity``."""
    rows = orders[:, K.O_ROW].astype(np.int64)
    return pl.DataFrame(
        {
            "decision_ts": _ts(ts_us[rows]),
            "symbol": _names(orders[:, K.O_COL], dict(enumerate(symbols))),
            "qty": orders[:, K.O_QTY],
            "target": orders[:, K.O_TARGET],
            "price": orders[:, K.O_PRICE],
            "reason": _names(orders[:, K.O_REASON], ORDER_REASONS),
            "equity": orders[:, K.O_EQUITY],
        }
    )


def _names(codes: np.ndarray, names: Mapping[int, str]) -> pl.Series:
    # one gather from a dense table of the names (codes are small non-negative integers)
    table = [""] * (max(names, default=0) + 1)
    for code, name in names.items():
        table[code] = name
    return pl.Series(table, dtype=pl.String).gather(codes.astype(np.int64))


def _groups(*cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of equal float columns (bit for bit): the first row of each group and each row's
    group (one sort of integer keys)."""
    n = len(cols[0])
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    bits = [np.ascontiguousarray(c, dtype=np.float64).view(np.int64) for c in cols]
    order = np.lexsort(bits[::-1])
    new = np.zeros(n, dtype=np.bool_)
    new[0] = True
    for b in bits:
        sb = b[order]
        new[1:] |= sb[1:] != sb[:-1]
    group = np.cumsum(new) - 1
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = group
    return order[new], inverse


def denials_frame(den: np.ndarray, symbols: Sequence[str], ts_us: np.ndarray) -> pl.DataFrame:
    """Denials and cuts: ``decision_ts, symbol, reason, target, requested_qty, allowed_qty,
    value, limit, detail`` (``reason`` is the rule's name, ``detail`` a sentence)."""
    from workbench.backtest import _kernels as BK

    rows = den[:, BK.D_DEC].astype(np.int64)
    reason = _names(den[:, BK.D_CODE], RULE_NAMES)
    value = den[:, K.DR_VALUE]
    limit = den[:, K.DR_LIMIT]
    # one sentence per distinct (rule, value, limit): runs of one rule (the end-of-day window,
    # a halted kill switch) repeat theirs
    first, inverse = _groups(den[:, BK.D_CODE], value, limit)
    texts = [
        reason_text(RULE_NAMES[int(den[i, BK.D_CODE])], float(value[i]), float(limit[i]))
        for i in first
    ]  # fmt: skip
    return pl.DataFrame(
        {
            "decision_ts": _ts(ts_us[rows]),
            "symbol": _names(den[:, BK.D_COL], dict(enumerate(symbols))),
            "reason": reason,
            "target": den[:, BK.D_TARGET],
            "requested_qty": pl.Series(den[:, BK.D_REQ]).fill_nan(None),
            "allowed_qty": den[:, BK.D_ALLOWED],
            "value": pl.Series(value).fill_nan(None),
            "limit": pl.Series(limit).fill_nan(None),
            "detail": pl.Series(texts, dtype=pl.String).gather(inverse.ravel().astype(np.int64)),
        }
    )


def trips_frame(g: np.ndarray, ts_us: np.ndarray) -> pl.DataFrame:
    """The kill-switch trip of a run (at most one: a backtest never re-arms)."""
    schema = {
        "ts": TS_DTYPE,
        "rule": pl.String,
        "value": pl.Float64,
        "limit": pl.Float64,
        "reason": pl.String,
    }
    if g[K.G_KILL] == 0.0:
        return pl.DataFrame(schema=schema)
    rule = TRIP_NAMES[int(g[K.G_TRIP_RULE])]
    value, limit = float(g[K.G_TRIP_VALUE]), float(g[K.G_TRIP_LIMIT])
    return pl.DataFrame(
        {
            "ts": _ts(ts_us[[int(g[K.G_TRIP_ROW])]]),
            "rule": [rule],
            "value": [value],
            "limit": [limit],
            "reason": [f"{rule}: {value:.4g} >= {limit:.4g}"],
        },
        schema=schema,
    )
