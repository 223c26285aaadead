"""Frozen, typed configuration: YAML defaults, an environment overlay and WB_* overrides.

Load order (later wins):

1. ``config/workbench.yaml`` — the defaults, committed;
2. ``config/<WB_ENV>.yaml`` — an optional overlay chosen by the ``WB_ENV`` variable;
3. ``config/strategies/*.yaml`` — one file per strategy, merged under ``strategies.<file stem>``;
4. ``WB_<SECTION>__<FIELD>[__<SUBFIELD>...]`` environment variables, values parsed as YAML
   (``WB_SIMULATOR__ALPHA=0.02``, ``WB_DATA__SYMBOLS='[SYN000, SYN001]'``).

Unknown keys anywhere are errors naming the key, where it was found and the closest valid key.
Secrets (``APCA_API_KEY_ID``, ``APCA_API_SECRET_KEY``) are read only from the environment, are
never part of :func:`config_hash`, and are masked in every dump.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from workbench.errors import ConfigError

RESERVED_ENV = frozenset(
    {
        "WB_ENV",
        "WB_CONFIG_DIR",
        "WB_PROJECT_ROOT",
        "WB_LIVE_TRADING",
        "WB_FAILPOINTS",
        "WB_SMTP_PASSWORD",
    }
)  # not config fields: the overlay, folders, the live opt-in, crash points (tests), a secret
SECRET_ENV = ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "WB_SMTP_PASSWORD")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class StoreConfig(_Frozen):
    """Where bars live: a local folder (relative to the project) or, later, any fsspec URL."""

    root: str = "data/bars"  # bar store root
    partition: Literal["day", "month", "year"] = "month"  # period of one parquet file per symbol
    features_root: str = "data/features"  # feature store root


class DataConfig(_Frozen):
    """The default universe and window every stage starts from."""

    source: str = "synthetic"  # registered source name: synthetic | files | alpaca
    symbols: tuple[str, ...] = tuple(f"SYN{i:03d}" for i in range(8))  # default universe
    timeframe: str = "5Min"  # 1Min | 5Min | 15Min | 1Hour | 1Day
    start: date = date(2024, 1, 2)  # first session (inclusive)
    end: date = date(2024, 3, 28)  # last session (inclusive)
    calendar: str = "XNYS"  # exchange calendar code (exchange_calendars)

    @field_validator("timeframe")
    @classmethod
    def _tf(cls, v: str) -> str:
        from workbench.data.timeframe import Timeframe

        return Timeframe.parse(v).name

    @field_validator("end")
    @classmethod
    def _window(cls, v: date, info: Any) -> date:
        start = info.data.get("start")
        if start is not None and v < start:
            raise ValueError(f"end {v} is before start {start}; set end on or after start")
        return v


class SimulatorConfig(_Frozen):
    """The embedded market simulator (see :mod:`workbench.data.sources.synthetic`)."""

    seed: int = Field(7, ge=0, lt=2**32)  # master seed: same seed, same bars
    alpha: float = Field(0.0, ge=0.0, le=0.5)  # planted predictability; 0 = martingale
    vwap_reversion: float = Field(0.0, ge=0.0, le=0.5)  # planted reversion to the session VWAP
    trend: float = Field(0.0, ge=0.0, le=1.0)  # planted multi-day drift, sd / daily vol
    n_sectors: int = Field(3, ge=1)  # sector factors
    start_price: float = Field(100.0, gt=0)  # mean starting price
    annual_vol: float = Field(0.25, gt=0)  # average annualised volatility of a symbol
    base_volume: float = Field(50_000.0, gt=0)  # average shares per 5 minutes at midday
    base_spread_bps: float = Field(4.0, ge=0)  # average quoted spread at midday, bps


class IngestConfig(_Frozen):
    """How ingest splits work into chunks."""

    chunk_days: int = Field(30, ge=1)  # calendar days of one chunk
    chunk_symbols: int = Field(20, ge=1)  # symbols of one chunk
    progress: bool = True  # show a progress bar


class AlpacaConfig(_Frozen):
    """Alpaca endpoints and data options. Keys come only from the environment."""

    data_url: str = "https://data.alpaca.markets"  # market-data REST base URL
    trading_url: str = "https://paper-api.alpaca.markets"  # trading REST base URL (paper)
    stream_url: str | None = None  # market-data websocket URL override
    trading_stream_url: str | None = (
        None  # trade_updates websocket; default: trading_url as ws(s)://.../stream
    )
    feed: Literal["iex", "sip"] = "iex"  # data feed
    adjustment: Literal["raw", "split", "dividend", "all"] = "all"  # corporate-action adjustment
    free_plan: bool = True  # clamp SIP requests to 15 minutes ago
    rate_limit_per_minute: int = Field(200, ge=1)  # client-side request budget
    max_retries: int = Field(6, ge=0)  # retries on 429/5xx/timeouts
    timeout_seconds: float = Field(10.0, gt=0)  # per-request timeout (connect, read)
    deadline_seconds: float = Field(
        25.0, gt=0
    )  # total per call: attempts, timeouts and waits between retries
    max_pages_per_chunk: int = Field(1000, ge=1)  # pagination bound per chunk
    asset_cache_ttl_seconds: int = Field(3600, ge=0)  # asset facts cache lifetime


class MlflowConfig(_Frozen):
    """Tracking store. ``MLFLOW_TRACKING_URI`` in the environment wins over this."""

    tracking_uri: str = "sqlite:///mlflow.db"  # relative sqlite paths resolve against the project
    artifact_root: str = "mlartifacts"  # artifact folder for new experiments
    experiment: str = "workbench"  # experiment name


class FeatureSpec(_Frozen):
    """One feature of a feature set: a registered indicator, its keyword arguments, a column alias."""

    name: str  # registered indicator name
    params: dict[str, int | float | str | bool] = Field(default_factory=dict)  # keyword arguments
    alias: str | None = None  # output column (default: name plus parameters)


class CostsConfig(_Frozen):
    """Trading costs applied by the backtest and the simulated broker."""

    commission_per_share: float = Field(0.0, ge=0)  # $ per share
    commission_min: float = Field(0.0, ge=0)  # $ minimum per order (with per-share)
    commission_bps: float = Field(0.0, ge=0)  # bps of notional
    commission_flat: float = Field(0.0, ge=0)  # $ per order
    half_spread_bps: float = Field(2.0, ge=0)  # half the quoted spread when bars carry none
    spread_from_bars: bool = False  # estimate the spread from high/low instead of config
    slippage_bps: float = Field(0.0, ge=0)  # base slippage
    impact_coef: float = Field(0.0, ge=0)  # square-root impact coefficient (x sigma x sqrt(q/V))
    intraday_u_shape: float = Field(0.0, ge=0)  # extra slippage at open/close (fraction of base)
    borrow_bps_annual: float = Field(
        0.0, ge=0
    )  # borrow fee on short notional, bps per year (ACT/360)
    estimate_span: int = Field(
        20, ge=1
    )  # EWMA span (bars) of the spread, volatility and volume estimates
    model: Literal["config", "learned"] = (
        "config"  # learned: the slippage model fitted on fills prices spread, slippage and impact
    )
    slippage_path: str = "data/slippage"  # the learned slippage model's versions (project-relative)
    learn_paper_impact: bool = False  # paper fills ignore size: they teach no impact unless True


class BacktestConfig(_Frozen):
    """Backtest defaults."""

    initial_cash: float = Field(100_000.0, gt=0)  # starting equity
    fill_price: Literal["open", "vwap"] = "open"  # next bar's open or vwap
    sizing: Literal["fraction", "notional", "shares"] = "fraction"  # how targets are read
    fractional: bool = False  # allow fractional shares
    allow_short: bool = True  # allow short positions
    max_leverage: float = Field(
        1.0, gt=0
    )  # cap on gross exposure / equity for orders that add exposure
    rebalance: Literal["on_change", "every_bar"] = (
        "on_change"  # order when the target changes, or every bar
    )
    costs: CostsConfig = CostsConfig()


class GatesConfig(_Frozen):
    """Promotion gates: a model becomes ``challenger`` only if all pass."""

    min_sharpe: float | None = 0.5  # annualised out-of-sample Sharpe
    min_deflated_sharpe: float | None = None  # probability, 0..1
    max_pbo: float | None = None  # probability of backtest overfitting, 0..1
    pbo_min_distinct: int = Field(
        3, ge=2
    )  # distinct candidates (after merging near-duplicates) below which PBO is not measurable
    max_drawdown: float | None = 0.25  # fraction, positive number
    min_trades: int | None = 20  # out-of-sample trades
    min_win_rate: float | None = None  # fraction
    min_ic: float | None = None  # out-of-sample information coefficient
    max_turnover: float | None = None  # average daily turnover, x equity
    # lower end of the Sharpe ratio's bootstrap interval (stationary bootstrap of the
    # walk-forward returns, validation.montecarlo); e.g. 0.0: the edge must be positive at 95%
    min_sharpe_ci_low: float | None = None
    # the model beats its strategy's rule baseline after costs on the same window: one-sided
    # paired HAC test of daily returns, p <= this level (needs the strategy's baseline: section)
    beats_baseline: float | None = Field(None, gt=0, lt=1)


class LabelConfig(_Frozen):
    """How the training target is built."""

    kind: Literal["forward_return", "triple_barrier", "mean_reversion", "trend"] = "forward_return"
    horizon: int = Field(12, ge=1)  # bars
    params: dict[str, int | float | str | bool] = Field(default_factory=dict)


class ParamRange(_Frozen):
    """One searched hyperparameter: a numeric range (``low``..``high``) or a list of ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False  # sample on a log scale (low > 0)
    integer: bool = False  # draw integers
    choices: tuple[int | float | str | bool, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamRange:
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError(
                    "give either non-empty choices or low/high, not both. Fix: e.g. "
                    "{low: 4, high: 64, log: true, integer: true} or {choices: [gbdt, dart]}"
                )
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(
                f"needs low < high; got low={self.low}, high={self.high}. Fix: e.g. "
                "{low: 0.01, high: 0.3, log: true}"
            )
        if self.log and self.low <= 0:
            raise ValueError(
                f"log scale needs low > 0; got low={self.low}. Fix: raise low or drop log"
            )
        return self


class SearchConfig(_Frozen):
    """Hyperparameter search of the train stage: Optuna TPE scored by purged K-fold on the
    training window, then PBO from combinatorial purged CV over the best configurations."""

    score: Literal["sharpe", "ic"] = "sharpe"  # per-bar Sharpe of the fold's backtest, or the IC
    n_trials: int = Field(20, ge=1)  # trials (completed or pruned) the study holds
    n_folds: int = Field(5, ge=2)  # purged K-fold folds over the training window
    embargo: float = Field(
        0.01, ge=0, lt=1
    )  # share of training timestamps embargoed after a test block
    space: dict[str, ParamRange] = Field(default_factory=dict)  # empty: the library's default space
    storage: str = "sqlite:///runs/optuna.db"  # Optuna RDB URL or journal:PATH (relative paths: project)
    pbo_configs: int = Field(8, ge=2)  # best trials whose CPCV paths measure PBO
    cpcv_groups: int = Field(6, ge=3)  # CPCV groups N
    cpcv_test_groups: int = Field(2, ge=1)  # CPCV test groups k per split
    pbo_splits: int = Field(8, ge=2, multiple_of=2)  # CSCV row blocks per CPCV path
    pbo_duplicate_correlation: float = Field(
        0.9, gt=0, le=1
    )  # candidates whose out-of-sample returns correlate above this count as one
    workers: int = Field(1, ge=1)  # Dask workers running trials at once on one shared storage

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        if self.workers > 1 and self.storage.startswith("sqlite"):
            raise ValueError(
                f"workers: {self.workers} cannot share the SQLite storage {self.storage!r} "
                "(SQLite is not for concurrent writers). Fix: storage: "
                "journal:runs/optuna.journal (one host) or postgresql://user@host/db (many "
                "hosts), or workers: 1"
            )
        if self.cpcv_test_groups >= self.cpcv_groups:
            raise ValueError(
                f"cpcv_test_groups ({self.cpcv_test_groups}) must be below cpcv_groups "
                f"({self.cpcv_groups}). Fix: e.g. cpcv_groups: 6, cpcv_test_groups: 2"
            )
        return self


class DecisionConfig(_Frozen):
    """How a prediction becomes a side: fixed thresholds, quantiles of the training predictions,
    or probability thresholds; optionally only with the trend (see :mod:`workbench.risk.decision`)."""

    method: Literal["threshold", "quantile", "probability"] = "threshold"
    long: float = 0.0  # threshold: prediction above which long; quantile: its level (0.8); probability: p above which long
    short: float = 0.0  # threshold: prediction below which short; quantile: its level (0.2); probability: p below which short
    trend_filter: int | None = Field(
        None, ge=2
    )  # bars of a moving average of closes: longs above it, shorts below
    cost_multiples: tuple[float, ...] = ()  # +-m x round-trip cost; the search's purged CV picks m

    @model_validator(mode="after")
    def _check(self) -> DecisionConfig:
        if self.cost_multiples and (self.method != "threshold" or min(self.cost_multiples) < 0):
            raise ValueError(
                f"cost_multiples {list(self.cost_multiples)} need method: threshold and multiples "
                f">= 0; got method {self.method!r}. Fix: e.g. {{method: threshold, "
                "cost_multiples: [1.0, 1.5, 2.0]}, or drop cost_multiples"
            )
        if self.short > self.long:
            raise ValueError(
                f"short ({self.short}) must be <= long ({self.long}). Fix: swap them or set them equal"
            )
        if self.method == "quantile" and not (0.0 < self.short <= self.long < 1.0):
            raise ValueError(
                f"quantile levels need 0 < short <= long < 1; got short={self.short}, long={self.long}. "
                "Fix: e.g. {method: quantile, long: 0.8, short: 0.2}"
            )
        if self.method == "probability" and not (0.0 <= self.short <= self.long <= 1.0):
            raise ValueError(
                f"probability thresholds need 0 <= short <= long <= 1; got short={self.short}, "
                f"long={self.long}. Fix: e.g. {{method: probability, long: 0.55, short: 0.45}}"
            )
        return self


class RegimeConfig(_Frozen):
    """Volatility regimes from percentiles of past realised volatility only."""

    window: int = Field(20, ge=2)  # bars of the realised volatility
    lookback: int = Field(780, ge=10)  # past bars whose volatility percentiles set the regimes
    low_pct: float = Field(33.0, gt=0, lt=100)  # percentile below which volatility is low
    high_pct: float = Field(67.0, gt=0, lt=100)  # percentile above which volatility is high
    multipliers: tuple[float, float, float] = (1.0, 1.0, 0.5)  # size multiplier: low, medium, high

    @model_validator(mode="after")
    def _check(self) -> RegimeConfig:
        if self.low_pct >= self.high_pct:
            raise ValueError(
                f"low_pct ({self.low_pct}) must be below high_pct ({self.high_pct}). Fix: e.g. 33 and 67"
            )
        if any(m < 0 for m in self.multipliers):
            raise ValueError(
                f"multipliers must be >= 0; got {list(self.multipliers)}. Fix: e.g. [1.0, 1.0, 0.5]"
            )
        return self


class SizingConfig(_Frozen):
    """How a side becomes a target fraction of equity (see :mod:`workbench.risk.sizing`)."""

    method: Literal["fixed_fraction", "atr_risk", "vol_target", "kelly"] = "fixed_fraction"
    fraction: float = Field(0.1, gt=0, le=10)  # fixed fraction of equity (and the Kelly fallback)
    risk_pct: float = Field(0.01, gt=0, le=1)  # atr_risk: equity risked per trade at the stop
    atr_window: int = Field(14, ge=1)  # bars of the average true range
    atr_k: float = Field(2.0, gt=0)  # stop distance in ATRs (atr_risk, Kelly's cap, portfolio heat)
    vol_target: float = Field(0.15, gt=0)  # vol_target: annualised volatility of the position
    vol_window: int = Field(20, ge=2)  # bars of the realised volatility (vol_target)
    max_leverage: float = Field(
        1.0, gt=0
    )  # cap on |target| per symbol (vol_target, atr_risk, kelly)
    kelly_mode: Literal["payoff", "mean_variance"] = "payoff"  # f = p - (1-p)/b, or f = mu/sigma^2
    kelly_fraction: float = Field(0.5, gt=0, le=1)  # fraction of the Kelly bet
    kelly_max_risk: float = Field(0.01, gt=0, le=1)  # cap: equity at risk per trade at the stop
    kelly_min_trades: int = Field(30, ge=1)  # fixed fraction until this many closed trades
    regime: RegimeConfig | None = None  # volatility-regime multiplier (off when absent)
    min_trade: float = Field(0.0, ge=0, le=1)  # no order when |target - position| < this x equity


class ExposureCaps(_Frozen):
    """Gross and net exposure caps of one strategy type (fractions of equity)."""

    max_gross: float | None = Field(1.0, gt=0)  # sum |position value| / equity
    max_net: float | None = Field(1.0, gt=0)  # |sum position value| / equity


class LimitsConfig(_Frozen):
    """Pre-trade limits (see :mod:`workbench.risk.limits`); ``null`` turns a rule off."""

    max_position: float | None = Field(0.2, gt=0)  # |position value| / equity per symbol
    max_open_positions: int | None = Field(None, ge=1)  # symbols held at once
    sector_cap: float | None = Field(None, gt=0)  # sum |position value| in one sector / equity
    sectors: dict[str, str] = Field(default_factory=dict)  # symbol -> sector (default: asset facts)
    max_correlation: float | None = Field(
        None, gt=0, le=1
    )  # no new same-side position this correlated with a held one
    correlation_window: int = Field(78, ge=3)  # bars of past returns the correlation uses
    heat_max: float | None = Field(None, gt=0)  # sum stop distance x shares / equity
    leverage: float | None = Field(
        1.0, gt=0
    )  # buying power: gross exposure after the order <= leverage x equity
    pdt: bool = (
        False  # pattern-day-trader rule (removed by Alpaca in 2026; historical backtests only)
    )


class KillSwitchConfig(_Frozen):
    """Kill-switch trips (see :mod:`workbench.risk.killswitch`); ``null`` turns a trip off."""

    daily_loss: float | None = Field(
        None, gt=0, lt=1
    )  # loss since the session's first mark / that equity
    max_drawdown: float | None = Field(None, gt=0, lt=1)  # drawdown from the session's peak equity
    consecutive_losses: int | None = Field(None, ge=1)  # losing round trips in a row
    max_violations: int | None = Field(None, ge=1)  # limit denials within the window
    violation_window_minutes: float = Field(5.0, gt=0)  # window of max_violations
    heat_emergency: float | None = Field(None, gt=0)  # portfolio heat that trips the switch


class StrategyRiskConfig(_Frozen):
    """The risk rules one strategy trades under, in backtests and sessions alike."""

    limits: LimitsConfig = LimitsConfig()
    killswitch: KillSwitchConfig = KillSwitchConfig()
    eod_flatten_minutes: float | None = Field(
        5.0, ge=0
    )  # intraday strategies: flat this long before the exchange close (early closes included)


class BaselineConfig(_Frozen):
    """The rule a strategy's model must beat (see :mod:`workbench.validation.baseline`)."""

    rule: Literal["momentum", "mean_reversion"]
    feature: str | None = None  # a past-return feature; default: chosen on the training rows


class StrategyConfig(_Frozen):
    """A strategy: the features it reads, what it predicts, how it trades, how it is judged."""

    feature_set: str  # key of feature_sets
    type: Literal["intraday", "swing"] = (
        "intraday"  # intraday: flat by the close; swing: may hold overnight
    )
    label: LabelConfig = LabelConfig()
    model: dict[str, int | float | str | bool] = Field(
        default_factory=dict
    )  # LGBMForecaster parameters; the searched ones (search.space) are the search's to set
    search: SearchConfig = SearchConfig()
    decision: DecisionConfig = DecisionConfig()
    sizing: SizingConfig = SizingConfig()
    risk: StrategyRiskConfig = StrategyRiskConfig()
    gates: GatesConfig = GatesConfig()
    baseline: BaselineConfig | None = None  # the rule the validate step compares the model with


class RiskConfig(_Frozen):
    """Risk settings shared by every strategy: persisted kill-switch state, exposure per type."""

    state_url: str = "sqlite:///runs/risk.db"  # kill-switch state (relative sqlite paths: project)
    exposure: dict[Literal["intraday", "swing"], ExposureCaps] = Field(
        default_factory=lambda: {"intraday": ExposureCaps(), "swing": ExposureCaps()}
    )  # gross/net caps by strategy type


class ExecutionPolicyConfig(_Frozen):
    """How decided orders are worked at the broker (see :mod:`workbench.execution.policy`)."""

    order_type: Literal["market", "limit"] = (
        "market"  # market: fills at the next bar's open, as the backtest assumes
    )
    limit_buffer_bps: float = Field(5.0, ge=0)  # limit at mid/close +- this buffer (marketable side)
    fallback_after_seconds: float | None = Field(
        60.0, gt=0
    )  # an unfilled limit is replaced by a market order after this long
    stale_after_seconds: float | None = Field(
        300.0, gt=0
    )  # cancel (confirm) and re-send a working order older than this
    max_concurrent_orders: int = Field(50, ge=1)  # working orders at once; more wait for a slot
    bracket_take_profit_atr: float | None = Field(
        None, gt=0
    )  # protective bracket: take-profit this many ATRs away (null: no bracket)
    bracket_stop_loss_atr: float | None = Field(None, gt=0)  # stop-loss this many ATRs away
    requests_per_minute: int = Field(180, ge=1, le=200)  # trading-API request budget


class ReconcileConfig(_Frozen):
    """What start-up reconciliation does with what it finds."""

    orphan_orders: Literal["cancel", "adopt", "halt"] = (
        "cancel"  # open orders the ledger does not know
    )
    lookback_days: int = Field(7, ge=1)  # how far back recent orders are read
    qty_tolerance: float = Field(1e-6, ge=0)  # shares; a larger position difference halts


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ShadowConfig(_Frozen):
    """Shadow sessions (``wb shadow``): the account the challenger trades beside the champion.

    ``alpaca``: its own Alpaca paper account, whose keys are read from the environment variables
    named here (the config names the variables, never holds the keys)."""

    challenger_broker: Literal["sim", "alpaca"] = (
        "sim"  # sim: its own simulated account | alpaca: its own paper account
    )
    key_id_env: str = "APCA_CHALLENGER_API_KEY_ID"  # env var with the challenger account's key id
    secret_key_env: str = "APCA_CHALLENGER_API_SECRET_KEY"  # env var with its secret key
    trading_url: str | None = None  # its trading REST URL; null: alpaca.trading_url (paper)
    trading_stream_url: str | None = None  # its trade_updates websocket; null: from trading_url

    @field_validator("key_id_env", "secret_key_env")
    @classmethod
    def _env_name(cls, v: str, info: Any) -> str:
        field = f"execution.shadow.{info.field_name}"
        if not _ENV_NAME.match(v):
            raise ValueError(
                f"{field} must name an environment variable (letters, digits, _). Got {v!r}. "
                "Fix: e.g. APCA_CHALLENGER_API_KEY_ID (the variable's name, never the key)."
            )
        if v in ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY"):
            raise ValueError(
                f"{field} is {v!r}: the champion's keys. The challenger needs its own paper "
                "account. Fix: name variables of its own, e.g. APCA_CHALLENGER_API_KEY_ID and "
                "APCA_CHALLENGER_API_SECRET_KEY."
            )
        return v


class ExecutionConfig(_Frozen):
    """Trading sessions: broker, ledger, order working, reconcile, shutdown."""

    broker: Literal["sim", "alpaca"] = "sim"  # default broker of `wb session run`
    ledger_url: str = "sqlite:///runs/ledger.db"  # order ledger (relative sqlite paths: project)
    sim_state_url: str | None = (
        None  # the simulated venue's durable state ({session} is replaced); null: beside the ledger
    )
    policy: ExecutionPolicyConfig = ExecutionPolicyConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
    on_shutdown: Literal["keep", "flatten"] = (
        "keep"  # protective orders and positions at SIGTERM (entries are always cancelled)
    )
    settle_seconds: float = Field(
        10.0, gt=0
    )  # replay mode: wait this long for a bar's orders to finish before the next bar
    watchdog_seconds: float = Field(30.0, gt=0)  # a silent trade stream is presumed dead after this
    poll_seconds: float = Field(5.0, gt=0)  # REST polling of open orders while the stream is down
    shadow: ShadowConfig = ShadowConfig()  # where a shadow session's challenger trades


class MonitoringConfig(_Frozen):
    """Drift, staleness, lag, performance and model-age checks (see :mod:`workbench.monitoring`)."""

    psi_bins: int = Field(10, ge=2)  # PSI bins at the reference's quantiles
    psi_warn: float = Field(0.1, gt=0)  # PSI at or above this: warning
    psi_alert: float = Field(0.25, gt=0)  # PSI at or above this: alert (critical)
    min_rows: int = Field(100, ge=10)  # fewer live rows than this: no drift verdict
    reference_rows: int = Field(20_000, ge=100)  # rows per column sampled into a model's reference
    session_drift_bars: int = Field(
        0, ge=0
    )  # a session measures drift every this many bars (0: at its end only)
    stale_warn_bars: int = Field(3, ge=0)  # last bar behind the calendar by more bars: warning
    stale_alert_bars: int = Field(12, ge=1)  # ... by this many bars or more: alert
    lag_warn_seconds: float = Field(60.0, gt=0)  # p95 decision -> fill at or above this: warning
    lag_alert_seconds: float = Field(300.0, gt=0)  # ... at or above this: alert
    anomaly_window: int = Field(5, ge=1)  # sessions in the rolling PnL / hit-rate window
    anomaly_warn_p: float = Field(0.05, gt=0, lt=1)  # backtest share of windows as bad: warning
    anomaly_alert_p: float = Field(0.01, gt=0, lt=1)  # ... at or below this: alert
    model_age_warn_days: float = Field(14.0, gt=0)  # model version older than this: warning
    model_age_alert_days: float = Field(30.0, gt=0)  # ... older than this: alert
    retrain_on_drift: bool = False  # drift past psi_alert asks for weekly_retrain early
    retrain_min_features: int = Field(1, ge=1)  # columns past psi_alert that ask for it
    retrain_cooldown_days: float = Field(2.0, ge=0)  # never for a model younger than this

    @model_validator(mode="after")
    def _check(self) -> MonitoringConfig:
        for lo, hi in (
            ("psi_warn", "psi_alert"),
            ("lag_warn_seconds", "lag_alert_seconds"),
            ("model_age_warn_days", "model_age_alert_days"),
        ):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(
                    f"{lo} ({getattr(self, lo)}) must be <= {hi} ({getattr(self, hi)}). "
                    "Fix: the warning level comes first, e.g. psi_warn: 0.1, psi_alert: 0.25"
                )
        if self.anomaly_alert_p > self.anomaly_warn_p:
            raise ValueError(
                f"anomaly_alert_p ({self.anomaly_alert_p}) must be <= anomaly_warn_p "
                f"({self.anomaly_warn_p}). Fix: e.g. anomaly_warn_p: 0.05, anomaly_alert_p: 0.01"
            )
        return self


class AlertsConfig(_Frozen):
    """Alert channels (log always; webhook and email when configured), dedupe and rate limits.
    The SMTP password comes only from the environment (``WB_SMTP_PASSWORD``)."""

    min_severity: Literal["info", "warning", "critical"] = (
        "warning"  # webhook and email get this and above; the log gets everything
    )
    webhook_url: SecretStr | None = None  # Slack or Discord incoming webhook (a credential: masked)
    webhook_format: Literal["both", "slack", "discord"] = (
        "both"  # JSON with Slack's `text` and Discord's `content`, or only one of them
    )
    timeout_seconds: float = Field(10.0, gt=0)  # per delivery attempt
    smtp_host: str | None = None  # email channel: SMTP server (null: no email)
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_tls: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_user: str | None = None  # login user (password: WB_SMTP_PASSWORD)
    email_from: str = "workbench@localhost"
    email_to: tuple[str, ...] = ()  # recipients (none: no email)
    dedupe_seconds: float = Field(3600.0, ge=0)  # the same alert is sent once per this window
    rate_limit: int = Field(10, ge=1)  # alerts of one kind per rate window; more are held back
    rate_window_seconds: float = Field(3600.0, gt=0)
    history_path: str = "runs/alerts.jsonl"  # every alert and its outcome, one JSON line each


class MetricsConfig(_Frozen):
    """Prometheus ``/metrics`` of the long-lived processes (0: no exporter)."""

    host: str = "127.0.0.1"  # bind address: loopback unless a scraper elsewhere needs it
    session_port: int = Field(0, ge=0, le=65535)  # `wb session run` / the session stage
    scheduler_port: int = Field(0, ge=0, le=65535)  # `wb schedule start`


class DaskConfig(_Frozen):
    """Where parallel work runs (see :mod:`workbench.cluster`): in-process (``local``) or on Dask,
    a ``LocalCluster`` the workbench starts and stops, or the scheduler at ``address``."""

    executor: Literal["local", "dask"] = "local"  # sweeps and features fan-out (search: workers)
    address: str | None = None  # tcp://host:8786 of a running scheduler; null: a LocalCluster
    n_workers: int = Field(2, ge=1)  # LocalCluster worker processes
    threads_per_worker: int = Field(1, ge=1)  # LocalCluster threads per worker
    processes: bool = True  # worker processes (isolated kernels, GIL-free) or threads
    memory_limit: str = "auto"  # per LocalCluster worker ("4GiB"; auto: system memory / workers)
    dashboard_address: str = "127.0.0.1:0"  # LocalCluster dashboard (":8787"; port 0: a free one)
    connect_timeout: float = Field(5.0, gt=0)  # seconds to reach `address` before failing


class ScheduleConfig(_Frozen):
    """The scheduler process (`wb schedule start`) and pipeline run locks (see
    :mod:`workbench.pipeline.scheduler`)."""

    file: str = "pipelines/schedule.yaml"  # the schedule (relative paths: project)
    jobstore_url: str = "sqlite:///runs/schedule.db"  # APScheduler job store (SQLAlchemy URL)
    lock_url: str | None = None  # run locks (SQLAlchemy URL); null: locks.db in the runs folder
    misfire_grace_seconds: int = Field(900, ge=1)  # a run missed by at most this still starts, once
    display_timezone: str = "America/New_York"  # shown beside UTC
    max_workers: int = Field(4, ge=1)  # pipelines running at once (one instance of each)

    @field_validator("display_timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r}; use an IANA name such as 'America/New_York'"
            ) from None
        return v


class PromotionConfig(_Frozen):
    """How ``wb promote`` judges a challenger against the champion (see workbench.models.promotion)."""

    alpha: float = Field(0.05, gt=0, lt=1)  # one-sided level of the paired test (challenger better)
    min_deflated_sharpe: float | None = Field(
        None, ge=0, le=1
    )  # the challenger's DSR on the window; null: the strategy's gates.min_deflated_sharpe, else 0.95
    min_shadow_sessions: int = Field(0, ge=0)  # shadow sessions required beside the champion
    hac_lags: int | None = Field(
        None, ge=0
    )  # Newey-West lags of the paired test; null: floor(4 (n / 100) ** (2 / 9))


class ModelsConfig(_Frozen):
    """Model lifecycle: what a session may trade (gate record, age, drift) and promotion."""

    max_age_days: float | None = Field(
        180.0, gt=0
    )  # days from the training window's end to the session; older: expired (null: never)
    on_expired: Literal["refuse", "warn"] = "refuse"  # a session with an expired model version
    on_drift: Literal["refuse", "warn"] = "refuse"  # ... with a version monitoring flagged as drifted
    promotion: PromotionConfig = PromotionConfig()


class Secrets(BaseModel):
    """Broker keys, read from the environment only. Never hashed, never dumped in clear."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    apca_api_key_id: SecretStr | None = None
    apca_api_secret_key: SecretStr | None = None
    smtp_password: SecretStr | None = None

    @classmethod
    def from_env(cls) -> Secrets:
        return cls(
            apca_api_key_id=os.environ.get("APCA_API_KEY_ID") or None,
            apca_api_secret_key=os.environ.get("APCA_API_SECRET_KEY") or None,
            smtp_password=os.environ.get("WB_SMTP_PASSWORD") or None,
        )

    @property
    def has_alpaca(self) -> bool:
        return self.apca_api_key_id is not None and self.apca_api_secret_key is not None


class WorkbenchConfig(_Frozen):
    """The whole configuration tree."""

    data: DataConfig = DataConfig()
    store: StoreConfig = StoreConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    ingest: IngestConfig = IngestConfig()
    alpaca: AlpacaConfig = AlpacaConfig()
    mlflow: MlflowConfig = MlflowConfig()
    backtest: BacktestConfig = BacktestConfig()
    risk: RiskConfig = RiskConfig()
    execution: ExecutionConfig = ExecutionConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    dask: DaskConfig = DaskConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()
    models: ModelsConfig = ModelsConfig()
    feature_sets: dict[str, tuple[FeatureSpec, ...]] = Field(default_factory=dict)
    strategies: dict[str, StrategyConfig] = Field(default_factory=dict)
    secrets: Secrets = Field(default_factory=Secrets, exclude=True)
    project_root: Path = Field(default=Path("."), exclude=True)

    def path(self, value: str | Path) -> Path:
        """Resolve a project-relative path (absolute paths pass through)."""
        p = Path(value)
        return p if p.is_absolute() else (self.project_root / p)

    def strategy(self, name: str) -> StrategyConfig:
        """Return a strategy by name; unknown names get a did-you-mean error."""
        if name not in self.strategies:
            raise ConfigError(
                f"unknown strategy {name!r}; configured: {sorted(self.strategies)}{_did_you_mean(name, self.strategies)}. "
                "Fix: add config/strategies/<name>.yaml or pick a configured one."
            )
        return self.strategies[name]

    def dump(self) -> dict[str, Any]:
        """Return the config as plain data with secrets masked (for display)."""
        out = self.model_dump(mode="json")
        out["secrets"] = {
            k: ("********" if v is not None else None) for k, v in self.secrets.model_dump().items()
        }
        return out


# --------------------------------------------------------------------------------------------
# loading


def find_project_root(start: Path | None = None) -> Path:
    """Return ``WB_PROJECT_ROOT`` or the nearest folder upwards holding ``config/workbench.yaml``."""
    if env := os.environ.get("WB_PROJECT_ROOT"):
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "config" / "workbench.yaml").is_file():
            return d
    return here


def _did_you_mean(key: str, valid: Any) -> str:
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line number."""
    out: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = (*path, str(k.value))
                out[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, str(i)))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return out
    if root is not None:
        walk(root, ())
    return out


class _Layer:
    """One source of config values, with a way to say where a key came from."""

    def __init__(
        self,
        data: dict[str, Any],
        where: str,
        lines: dict[tuple[str, ...], int] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.data, self.where, self.lines, self.prefix = data, where, lines or {}, prefix

    def locate(self, path: tuple[str, ...]) -> str:
        rel = path[len(self.prefix) :] if path[: len(self.prefix)] == self.prefix else path
        line = self.lines.get(tuple(rel))
        return f"{self.where}, line {line}" if line else self.where


class _LenientDates(yaml.SafeLoader):
    """A safe loader that keeps an impossible date (``2024-02-30``) as its text, so the field
    that receives it reports the field, the value and where it came from (PyYAML raises a bare
    ``ValueError: day is out of range for month`` naming neither)."""

    def construct_yaml_timestamp(self, node: yaml.Node) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:
            return self.construct_scalar(node)


_LenientDates.add_constructor("tag:yaml.org,2002:timestamp", _LenientDates.construct_yaml_timestamp)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load``, except that impossible dates stay text (for a clear error later)."""
    return yaml.load(text, Loader=_LenientDates)  # a SafeLoader subclass


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    text = path.read_text()
    try:
        data = yaml_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{path}: not valid YAML ({exc}). Fix the syntax at the position shown."
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections at the top, got {type(data).__name__}."
        )
    return data, _line_index(text)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _check_keys(model: type[BaseModel], data: Any, path: tuple[str, ...], layer: _Layer) -> None:
    """Reject unknown keys with their place and the closest valid key (before pydantic runs)."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        if key in {"secrets", "project_root"} and model is WorkbenchConfig:
            raise ConfigError(
                f"{'.'.join((*path, key))} at {layer.locate((*path, key))}: secrets are read only from "
                f"the environment ({', '.join(SECRET_ENV)}). Fix: remove the key from the file and export "
                "the variables instead."
            )
        if key not in fields:
            dotted = ".".join((*path, str(key)))
            raise ConfigError(
                f"unknown config key {dotted!r} at {layer.locate((*path, str(key)))}"
                f"{_did_you_mean(key, fields)}. Valid keys here: {sorted(fields)}."
            )
        ann = fields[key].annotation
        sub = _submodel(ann)
        if sub is not None:
            _check_keys(sub, value, (*path, str(key)), layer)
        elif key in ("strategies",) and isinstance(value, dict):
            for name, strat in value.items():
                _check_keys(StrategyConfig, strat, (*path, key, str(name)), layer)
        elif key == "feature_sets" and isinstance(value, dict):
            for name, specs in value.items():
                for i, spec in enumerate(specs or []):
                    _check_keys(FeatureSpec, spec, (*path, key, str(name), str(i)), layer)


def _submodel(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    args = [a for a in get_args(ann) if a is not type(None)]
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]  # an optional section, e.g. ``RegimeConfig | None``
    return None


def _env_layer(model: type[BaseModel]) -> _Layer:
    data: dict[str, Any] = {}
    for name, raw in sorted(os.environ.items()):
        if not name.startswith("WB_") or name in RESERVED_ENV:
            continue
        parts = [p.lower() for p in name[3:].split("__")]
        if len(parts) < 2:
            raise ConfigError(
                f"environment variable {name} does not address a config field: use "
                f"WB_<SECTION>__<FIELD>, e.g. WB_SIMULATOR__ALPHA; sections: {sorted(model.model_fields)}"
                f"{_did_you_mean(parts[0], model.model_fields)}."
            )
        try:
            value = yaml_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return _EnvLayer(data, "environment (WB_* variables)")


class _EnvLayer(_Layer):
    """The WB_* variables: a key is located by the variable that set it."""

    def locate(self, path: tuple[str, ...]) -> str:
        return f"environment variable WB_{'__'.join(path).upper()}"


def load_config(root: str | Path | None = None, env: str | None = None) -> WorkbenchConfig:
    """Load the frozen config tree.

    Parameters
    ----------
    root : path, optional
        Project root (default: :func:`find_project_root`).
    env : str, optional
        Overlay name (default: ``WB_ENV``); ``config/<env>.yaml`` must exist when given.

    Raises
    ------
    ConfigError
        On unknown keys, bad values or a missing overlay, naming the place and the fix.
    """
    project = Path(root).resolve() if root is not None else find_project_root()
    cfg_dir = Path(os.environ.get("WB_CONFIG_DIR") or project / "config")
    if os.environ.get("WB_CONFIG_DIR") and not cfg_dir.is_dir():
        raise ConfigError(
            f"WB_CONFIG_DIR={os.environ['WB_CONFIG_DIR']!r} is not a folder (nothing would be read "
            "from it and the built-in defaults would run silently). Fix: point WB_CONFIG_DIR at the "
            "folder holding workbench.yaml, or unset it to use <project>/config."
        )
    layers: list[_Layer] = []
    base = cfg_dir / "workbench.yaml"
    if base.is_file():
        d, lines = _read_yaml(base)
        layers.append(_Layer(d, str(base), lines))
    env = env if env is not None else os.environ.get("WB_ENV")
    if env:
        overlay = cfg_dir / f"{env}.yaml"
        if not overlay.is_file():
            have = sorted(p.stem for p in cfg_dir.glob("*.yaml") if p.stem != "workbench")
            raise ConfigError(
                f"WB_ENV={env!r} but {overlay} does not exist; overlays present: {have}. "
                "Fix: create the file or unset WB_ENV."
            )
        d, lines = _read_yaml(overlay)
        layers.append(_Layer(d, str(overlay), lines))
    strat_dir = cfg_dir / "strategies"
    if strat_dir.is_dir():
        for f in sorted(strat_dir.glob("*.yaml")):
            d, lines = _read_yaml(f)
            layers.append(
                _Layer({"strategies": {f.stem: d}}, str(f), lines, ("strategies", f.stem))
            )
    layers.append(_env_layer(WorkbenchConfig))

    merged: dict[str, Any] = {}
    for layer in layers:
        _check_keys(WorkbenchConfig, layer.data, (), layer)
        merged = _merge(merged, layer.data)
    try:
        cfg = WorkbenchConfig(**merged, secrets=Secrets.from_env(), project_root=project)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            where = next(
                (lay.locate(loc) for lay in reversed(layers) if _has(lay.data, loc)), "defaults"
            )
            msgs.append(f"{'.'.join(loc)} = {err.get('input')!r} at {where}: {err['msg']}")
        raise ConfigError(
            "invalid config:\n  " + "\n  ".join(msgs) + "\nFix: correct the value at the place shown."
        ) from None
    for name, strat in cfg.strategies.items():
        if strat.feature_set not in cfg.feature_sets:
            raise ConfigError(
                f"strategies.{name}.feature_set = {strat.feature_set!r} is not a configured feature set"
                f"{_did_you_mean(strat.feature_set, cfg.feature_sets)}; configured: {sorted(cfg.feature_sets)}."
            )
    return cfg


def _has(data: Any, loc: tuple[str, ...]) -> bool:
    node = data
    for p in loc:
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list | tuple) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        else:
            return False
    return True


def config_hash(cfg: WorkbenchConfig) -> str:
    """Return the sha256 of the canonical JSON of the config (secrets and paths excluded)."""
    payload = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()
