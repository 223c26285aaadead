"""Slippage model learned from fills: per-symbol curves shrunk toward a cross-sectional prior.

**What is measured.** Each fill's cost in bps against its *arrival price*, signed so a cost is
positive: ``side * (price / arrival - 1) * 1e4``. The arrival price is the fill's ``ref_price``:
the decision bar's close for a broker fill (what the session knew when it decided), and on the
simulated venue, which executes at the next bar's open by construction, that bar's open (the
price the backtest charges its costs on). A fill without one falls back to the decision bar's
close from the bars.

**The curve** (:class:`workbench.backtest.costs.SlippageCurve`, the backtest's own cost formula)::

    bps = fixed[symbol] + tod[bucket(fill ts)] + impact[symbol] * sigma_bps * sqrt(qty / volume)

``fixed`` is the cost of a vanishingly small order (half-spread plus fixed slippage: the
``spread_forecast``), ``tod`` the time-of-day term of 30-minute buckets of the regular session
(higher at the open and the close), the last term square-root impact on the participation
``qty / volume`` (volume: EWMA bar volume at the decision bar) scaled by the per-bar volatility,
both with the backtest's estimators (:func:`workbench.backtest._kernels.estimates_nb`).

**The fit** (empirical Bayes, partial pooling): a pooled least-squares fit of bucket terms and
one impact coefficient over every fill gives the cross-sectional prior; each symbol's deviation
of fixed cost and impact from it is the posterior mean under a normal prior whose variances are
estimated by the method of moments (spread of the per-symbol estimates minus their sampling
variance). A symbol with a handful of fills stays near the prior; one with many fills gets its
own curve. The prior is worth at least ``prior_fills`` fills (a moment estimate from a few
symbols is noisy), as in credibility weighting. Costs are kept non-negative (the cheapest bucket's term is 0).

**Paper fills** (venue ``alpaca-paper``) ignore size (Alpaca's paper engine), so they teach the
fixed and time-of-day terms but no impact unless ``learn_paper_impact``.

**Persistence.** :class:`SlippageStore` keeps every observation (deduplicated by execution id,
time, symbol and quantity)
and one checksummed JSON file per fitted version in a folder of the store; each session's
:meth:`SlippageStore.update` appends its fills, refits and writes the next version atomically.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench.backtest._kernels import estimates_nb, frozen
from workbench.backtest.costs import SlippageCurve, tod_bucket
from workbench.errors import ConfigError
from workbench.execution.policy import ExecutionPolicy

PAPER_VENUES = frozenset({"alpaca-paper", "paper"})
OBS_COLUMNS = (
    "execution_id", "symbol", "ts", "decided_at", "qty", "arrival", "price", "venue", "sigma",
    "volume", "slip_bps",
)  # fmt: skip
_TS = pl.Datetime("us", "UTC")


def _us(ts: datetime | int | np.datetime64) -> int:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise ConfigError(f"ts must be timezone-aware (UTC). Got {ts!r} instead.")
        return int((ts - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000)
    return int(ts)


def bar_estimates(bars: pl.DataFrame, estimate_span: int = 20) -> pl.DataFrame:
    """Per bar ``symbol, ts, close, sigma, volume_ewm``: the backtest's causal volatility (per
    bar, a fraction) and EWMA volume estimates at each bar (:func:`estimates_nb`)."""
    if bars.height == 0:
        return pl.DataFrame(
            schema={"symbol": pl.String, "ts": _TS, "close": pl.Float64, "sigma": pl.Float64,
                    "volume_ewm": pl.Float64}
        )  # fmt: skip
    b = bars.select("symbol", "ts", "close", "volume").sort("symbol", "ts")
    close = b.pivot(on="symbol", index="ts", values="close").sort("ts")
    vol = b.pivot(on="symbol", index="ts", values="volume").sort("ts")
    syms = [c for c in close.columns if c != "ts"]
    c2 = close.select(syms).to_numpy().astype(float)
    v2 = vol.select(syms).to_numpy().astype(float)
    hl = np.empty((0, len(syms)))
    _, sigma, vew = estimates_nb(*frozen(hl, hl, c2, v2), float(estimate_span), False, True)
    out = []
    for j, s in enumerate(syms):
        out.append(
            pl.DataFrame(
                {
                    "symbol": s,
                    "ts": close["ts"],
                    "close": c2[:, j],
                    "sigma": sigma[:, j],
                    "volume_ewm": vew[:, j],
                }
            )
        )
    return pl.concat(out).filter(pl.col("close").is_not_nan())


def observations(
    fills: pl.DataFrame, bars: pl.DataFrame, *, estimate_span: int = 20
) -> pl.DataFrame:
    """Return one row per fill with its cost in bps and the decision bar's estimates.

    ``fills`` has the session's fill columns (``execution_id, symbol, ts, decided_at, qty,
    ref_price, price, venue``); ``bars`` the bars the session saw (warm-up included).
    """
    need = {"symbol", "ts", "qty", "price"}
    if missing := need - set(fills.columns):
        raise ConfigError(
            f"fills lack columns {sorted(missing)} (need {sorted(need)}); pass the session's "
            "fills frame (SessionResult.fills)."
        )
    f = fills
    if "execution_id" not in f.columns:
        f = f.with_row_index("execution_id").with_columns(pl.col("execution_id").cast(pl.String))
    for col, default in (("ref_price", float("nan")), ("venue", "")):
        if col not in f.columns:
            f = f.with_columns(pl.lit(default).alias(col))
    if "decided_at" not in f.columns:
        f = f.with_columns(pl.lit(None, dtype=_TS).alias("decided_at"))
    est = bar_estimates(bars, estimate_span)
    f = f.with_columns(pl.col("ts").cast(_TS), pl.col("decided_at").cast(_TS))
    # a venue's execution ids repeat across sessions (the simulated venue's are seeded
    # counters): the observation key adds when, what and how much
    f = f.with_columns(
        pl.concat_str(
            pl.col("execution_id").cast(pl.String), pl.col("ts").cast(pl.String),
            pl.col("symbol"), pl.col("qty").cast(pl.String), separator="|",
        ).alias("execution_id")
    )  # fmt: skip
    # the decision bar: decided_at, else the symbol's last bar before the fill
    prior = (
        f.with_columns((pl.col("ts") - pl.duration(microseconds=1)).alias("_before"))
        .sort("_before")
        .join_asof(
            est.rename({"ts": "_bar"}).sort("_bar"),
            left_on="_before",
            right_on="_bar",
            by="symbol",
            strategy="backward",
            check_sortedness=False,  # sorted by _before above, hence within each symbol
        )
        .select("execution_id", "_bar")
    )
    f = f.join(prior, on="execution_id", how="left").with_columns(
        pl.coalesce("decided_at", "_bar").alias("_dec")
    )
    f = f.join(est.rename({"ts": "_dec", "close": "_dec_close"}), on=["symbol", "_dec"], how="left")
    arrival = (
        pl.when(pl.col("ref_price").is_not_nan() & pl.col("ref_price").is_not_null())
        .then(pl.col("ref_price"))
        .otherwise(pl.col("_dec_close"))
    )
    side = pl.when(pl.col("qty") > 0).then(1.0).otherwise(-1.0)
    return (
        f.with_columns(arrival.alias("arrival"))
        .with_columns(
            (side * (pl.col("price") / pl.col("arrival") - 1.0) * 1e4).alias("slip_bps"),
            pl.col("_dec").alias("decided_at"),
            pl.col("volume_ewm").alias("volume"),
        )
        .select(OBS_COLUMNS)
        .filter(pl.col("slip_bps").is_finite())
        .sort("ts", "symbol", "execution_id")
    )


@dataclass
class SlippageModel:
    """Fit :class:`SlippageCurve` on fill observations (see the module doc).

    Parameters
    ----------
    bucket_minutes : int
        Width of a time-of-day bucket of the regular session.
    estimate_span : int
        EWMA span of the volatility and volume estimates (the backtest's ``estimate_span``).
    learn_paper_impact : bool
        Let paper fills teach impact (they ignore size, so by default they do not).
    min_fills : int
        Fills a symbol needs to enter the method-of-moments estimate of the prior's spread.
    prior_fills : float
        The least weight of the prior, in fills: a symbol with ``n`` fills moves at most
        ``n / (n + prior_fills)`` of the way from the prior to its own estimate.
    """

    bucket_minutes: int = 30
    estimate_span: int = 20
    learn_paper_impact: bool = False
    min_fills: int = 8
    prior_fills: float = 20.0
    curve_: SlippageCurve | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for name, v, lo in (("bucket_minutes", self.bucket_minutes, 1),
                            ("estimate_span", self.estimate_span, 1),
                            ("min_fills", self.min_fills, 3)):  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(
                    f"The {name!r} parameter of SlippageModel must be an int >= {lo}. "
                    f"Got {v!r} instead."
                )

    # ------------------------------------------------------------------ fit

    def design(self, obs: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Return ``(y, bucket, x, symbols)``: cost bps, bucket index, impact regressor
        ``sigma_bps * sqrt(|qty| / max(volume, 1))`` (0 where the fill teaches no impact) and
        the symbol of each observation."""
        y = obs["slip_bps"].to_numpy().astype(float)
        b = tod_bucket(obs["ts"].dt.epoch("us").to_numpy(), self.bucket_minutes)
        sg = obs["sigma"].fill_null(float("nan")).to_numpy().astype(float)
        vv = obs["volume"].fill_null(float("nan")).to_numpy().astype(float)
        n = np.abs(obs["qty"].to_numpy().astype(float))
        x = 1e4 * sg / np.sqrt(np.maximum(vv, 1.0)) * np.sqrt(n)
        teach = np.isfinite(x)
        if not self.learn_paper_impact:
            teach &= ~obs["venue"].is_in(list(PAPER_VENUES)).to_numpy()
        return y, b, np.where(teach, x, 0.0), obs["symbol"].to_list()

    def fit(self, obs: pl.DataFrame, *, version: int = 0) -> SlippageModel:
        """Fit the curve on :func:`observations` rows; sets ``curve_`` and returns ``self``."""
        if obs.height < 2:
            raise ConfigError(
                f"SlippageModel.fit needs at least 2 fills; got {obs.height}. Fix: trade a "
                "session first, or keep the configured costs (backtest.costs.model: config)."
            )
        y, b, x, syms = self.design(obs)
        n_b = -(-390 // self.bucket_minutes) + 1
        seen = np.unique(b)
        names = sorted(set(syms))
        sym_idx = np.searchsorted(names, np.array(syms))
        has_x = bool(np.any(x > 0))
        # columns: observed buckets | global impact slope | symbol levels | symbol slopes
        n_s, n_seen = len(names), len(seen)
        bucket_cols = (b[:, None] == seen[None, :]).astype(float)
        sym_cols = (sym_idx[:, None] == np.arange(n_s)[None, :]).astype(float)
        xbar = _teaching_means(x, sym_idx, n_s)
        # each symbol's slope deviation on x centred at its mean order: the level deviation is
        # the cost at its typical order, so shrinking one does not move the other
        xc = sym_cols * (x - xbar[sym_idx])[:, None]
        parts = [bucket_cols] + ([x[:, None], xc] if has_x else []) + [sym_cols]
        design = np.column_stack(parts)
        i_slope = n_seen if has_x else None
        i_sk = slice(n_seen + 1, n_seen + 1 + n_s) if has_x else slice(0, 0)
        i_sa = slice(design.shape[1] - n_s, design.shape[1])
        sigma2, tau2 = self._variances(y, b, x, sym_idx, n_s, bucket_cols, has_x)
        x2 = float(np.mean(x[x > 0] ** 2)) if has_x else 1.0
        # Henderson's mixed-model equations: symbol deviations ~ N(0, tau2); the prior level is
        # worth at least `prior_fills` fills (a moment estimate from a few symbols is noisy)
        lam_a = max(sigma2 / tau2[0] if tau2[0] > 0 else 1e12, self.prior_fills)
        lam_k = sigma2 / tau2[1] if tau2[1] > 0 else 1e12 * x2
        pen = np.zeros(design.shape[1])
        pen[i_sa] = lam_a
        pen[i_sk] = lam_k
        gram = design.T @ design + np.diag(pen)
        beta = np.linalg.lstsq(gram, design.T @ y, rcond=None)[0]
        c_b = np.full(n_b, np.nan)
        c_b[seen] = beta[:n_seen]
        c_b = np.where(np.isnan(c_b), float(np.nanmean(c_b)), c_b)
        k0 = float(beta[i_slope]) if i_slope is not None else 0.0
        dev_a = beta[i_sa]
        dev_k = beta[i_sk] if has_x else np.zeros(n_s)
        floor = float(c_b[seen].min())
        tod = tuple(float(v) for v in np.maximum(c_b - floor, 0.0))
        fixed = {
            s: max(0.0, floor + float(dev_a[i]) - float(dev_k[i]) * float(xbar[i]))
            for i, s in enumerate(names)
        }
        impact = {s: max(0.0, k0 + float(dev_k[i])) for i, s in enumerate(names)}
        sym = np.array(syms)
        last = (
            obs.sort("ts").group_by("symbol", maintain_order=True).agg(
                pl.col("sigma").last(), pl.col("volume").last()
            )
        )  # fmt: skip
        venues = obs["venue"].value_counts().to_dicts()
        self.curve_ = SlippageCurve(
            fixed_bps=fixed,
            impact=impact,
            tod_bps=tod,
            prior_fixed_bps=max(0.0, floor),
            prior_impact=max(0.0, k0),
            bucket_minutes=self.bucket_minutes,
            estimate_span=self.estimate_span,
            version=version,
            last_estimates={
                r["symbol"]: (_num(r["sigma"]), _num(r["volume"]))
                for r in last.iter_rows(named=True)
            },
            meta={
                "n_fills": int(obs.height),
                "fills_by_symbol": {s: int((sym == s).sum()) for s in names},
                "venues": {str(v["venue"]): int(v["count"]) for v in venues},
                "residual_sd_bps": math.sqrt(sigma2),
                "prior_sd_fixed_bps": math.sqrt(tau2[0]),
                "prior_sd_impact": math.sqrt(tau2[1]),
                "learn_paper_impact": self.learn_paper_impact,
                "fitted_at": datetime.now(UTC).isoformat(),
            },
        )
        return self

    def _variances(
        self, y: np.ndarray, b: np.ndarray, x: np.ndarray, sym_idx: np.ndarray, n_s: int,
        bucket_cols: np.ndarray, has_x: bool,
    ) -> tuple[float, tuple[float, float]]:  # fmt: skip
        """Residual variance and the prior variances of the symbols' (fixed, impact) deviations:
        method of moments on the unpenalised fit (spread of the per-symbol estimates minus their
        mean sampling variance)."""
        sym_cols = (sym_idx[:, None] == np.arange(n_s)[None, :]).astype(float)
        parts = [bucket_cols] + ([sym_cols * x[:, None]] if has_x else []) + [sym_cols]
        d = np.column_stack(parts)
        beta, _, rank, _ = np.linalg.lstsq(d, y, rcond=None)
        e = y - d @ beta
        dof = len(y) - rank
        sigma2 = float(e @ e) / dof if dof > 0 else float(np.var(y)) if len(y) > 1 else 1.0
        sigma2 = max(sigma2, 1e-12)
        r = y - bucket_cols @ beta[: bucket_cols.shape[1]]
        xbar = _teaching_means(x, sym_idx, n_s)
        ests, var = [], []
        for j in range(n_s):
            m = sym_idx == j
            xs = np.column_stack([np.ones(m.sum()), x[m] - xbar[j]])
            k = 2 if has_x and np.ptp(x[m]) > 0 else 1
            if m.sum() < max(self.min_fills, k + 2):
                continue
            theta = np.linalg.lstsq(xs[:, :k], r[m], rcond=None)[0]
            inv = np.linalg.pinv(xs[:, :k].T @ xs[:, :k])
            ests.append(np.r_[theta, [np.nan] * (2 - k)])
            var.append(np.r_[np.diag(inv), [np.nan] * (2 - k)] * sigma2)
        tau2 = [0.0, 0.0]
        if len(ests) >= 2:
            est, v = np.array(ests), np.array(var)
            for i in range(2):
                ok = np.isfinite(est[:, i])
                if ok.sum() >= 2:
                    tau2[i] = max(0.0, float(np.var(est[ok, i], ddof=1) - np.mean(v[ok, i])))
        return sigma2, (tau2[0], tau2[1])

    # ------------------------------------------------------------------ forecasts

    @property
    def curve(self) -> SlippageCurve:
        if self.curve_ is None:
            raise ConfigError("SlippageModel is not fitted. Fix: call fit() or load a curve.")
        return self.curve_

    @classmethod
    def from_curve(cls, curve: SlippageCurve) -> SlippageModel:
        """A fitted model around a saved curve."""
        m = cls(bucket_minutes=curve.bucket_minutes, estimate_span=curve.estimate_span)
        m.curve_ = curve
        return m

    def forecast(
        self,
        symbol: str,
        side: str | int,
        qty: float,
        price: float,
        ts: datetime | int,
        *,
        sigma: float | None = None,
        volume: float | None = None,
    ) -> float:
        """Return the expected cost in bps of filling ``qty`` shares of ``symbol`` at ``ts``.

        ``sigma`` and ``volume`` are the decision bar's estimates (default: the last the fit
        saw for the symbol). The cost is the same for both sides (``side``: buy/sell or +-1).
        """
        _check_side(side)
        if not (isinstance(price, int | float) and math.isfinite(price) and price > 0):
            raise ConfigError(f"price must be a positive finite number. Got {price!r} instead.")
        c = self.curve
        sg0, v0 = c.last_estimates.get(symbol, (math.nan, math.nan))
        sg = sg0 if sigma is None else sigma
        vv = v0 if volume is None else volume
        return float(c.bps(symbol, qty, _us(ts), sg, vv))

    def spread_forecast(self, symbol: str, ts: datetime | int) -> float:
        """Return the cost in bps of a vanishingly small order (half-spread plus fixed slippage)."""
        return float(self.curve.bps(symbol, 0.0, _us(ts), math.nan, math.nan))


def _teaching_means(x: np.ndarray, sym_idx: np.ndarray, n_s: int) -> np.ndarray:
    """Mean impact regressor of each symbol's fills that teach impact (0 when none does)."""
    teach = x > 0
    cnt = np.bincount(sym_idx[teach], minlength=n_s)
    tot = np.bincount(sym_idx[teach], weights=x[teach], minlength=n_s)
    return np.divide(tot, cnt, out=np.zeros(n_s), where=cnt > 0)


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _check_side(side: str | int) -> None:
    if side not in ("buy", "sell", 1, -1):
        raise ConfigError(f"side must be 'buy', 'sell', 1 or -1. Got {side!r} instead.")


# ---------------------------------------------------------------------- the store


@dataclass
class SlippageStore:
    """The slippage model's folder: ``observations.parquet`` and ``v{n:06d}.json`` versions."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def observations_path(self) -> Path:
        return self.root / "observations.parquet"

    def observations(self) -> pl.DataFrame:
        """Every fill observation recorded so far (empty frame when none)."""
        if not self.observations_path.is_file():
            return pl.DataFrame(schema=_OBS_SCHEMA)
        return pl.read_parquet(self.observations_path)

    def versions(self) -> list[int]:
        return SlippageCurve.versions(self.root)

    def latest(self) -> SlippageCurve | None:
        """The latest saved curve, None when nothing was fitted yet."""
        return SlippageCurve.load(self.root) if self.versions() else None

    def update(
        self, fills: pl.DataFrame, bars: pl.DataFrame, model: SlippageModel | None = None
    ) -> SlippageCurve | None:
        """Add a session's fills (deduplicated by execution id), refit on every observation and
        save the next version; returns it (None when fewer than 2 fills are known)."""
        model = model or SlippageModel()
        new = observations(fills, bars, estimate_span=model.estimate_span).cast(_OBS_SCHEMA)
        old = self.observations()
        allobs = pl.concat(
            [old, new.filter(~pl.col("execution_id").is_in(old["execution_id"].implode()))]
        )
        self.root.mkdir(parents=True, exist_ok=True)
        if allobs.height > old.height:
            tmp = self.observations_path.with_suffix(f".tmp{os.getpid()}")
            allobs.write_parquet(tmp)
            os.replace(tmp, self.observations_path)
        if allobs.height < 2:
            return None
        have = self.versions()
        if have and allobs.height == old.height:
            return SlippageCurve.load(self.root)  # nothing new: a re-run is idempotent
        curve = model.fit(allobs, version=(have[-1] + 1) if have else 1).curve
        curve.save(self.root)
        return curve


_OBS_SCHEMA = {
    "execution_id": pl.String, "symbol": pl.String, "ts": _TS, "decided_at": _TS,
    "qty": pl.Float64, "arrival": pl.Float64, "price": pl.Float64, "venue": pl.String,
    "sigma": pl.Float64, "volume": pl.Float64, "slip_bps": pl.Float64,
}  # fmt: skip


def curve_table(curve: SlippageCurve) -> pl.DataFrame:
    """The curve as a table: one row per symbol (fills, fixed bps, impact) plus the prior."""
    by = curve.meta.get("fills_by_symbol", {})
    rows = [
        {"symbol": s, "fills": int(by.get(s, 0)), "fixed_bps": curve.fixed(s),
         "impact": curve.impact_of(s)}
        for s in sorted(curve.fixed_bps)
    ]  # fmt: skip
    rows.append(
        {"symbol": "(prior)", "fills": int(curve.meta.get("n_fills", 0)),
         "fixed_bps": curve.prior_fixed_bps, "impact": curve.prior_impact}
    )  # fmt: skip
    return pl.DataFrame(rows)


def curve_figure(curve: SlippageCurve, obs: pl.DataFrame | None = None) -> Any:
    """Plotly figure: the time-of-day curve (fixed prior + bucket term) and realised vs
    forecast cost per fill when ``obs`` is given."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("time of day (zero-size order)",
                                                        "forecast vs realised (bps)"))  # fmt: skip
    n_in = curve.n_buckets - 1
    labels = [
        f"{(570 + i * curve.bucket_minutes) // 60:02d}:{(570 + i * curve.bucket_minutes) % 60:02d}"
        for i in range(n_in)
    ] + ["off"]
    for s in sorted(curve.fixed_bps):
        fig.add_trace(
            go.Scatter(x=labels, y=[curve.fixed(s) + t for t in curve.tod_bps], name=s,
                       mode="lines+markers"), row=1, col=1,
        )  # fmt: skip
    if obs is not None and obs.height:
        fc = forecasts(curve, obs)
        fig.add_trace(
            go.Scatter(x=fc["forecast_bps"].to_list(), y=fc["slip_bps"].to_list(),
                       mode="markers", name="fills", opacity=0.5), row=1, col=2,
        )  # fmt: skip
        lo, hi = float(fc["forecast_bps"].min()), float(fc["forecast_bps"].max())
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x"), row=1, col=2)
    fig.update_layout(height=420, title=f"slippage model v{curve.version}")
    return fig


def forecasts(curve: SlippageCurve, obs: pl.DataFrame) -> pl.DataFrame:
    """``obs`` with the curve's ``forecast_bps`` of each fill beside its realised ``slip_bps``."""
    ts = obs["ts"].dt.epoch("us").to_numpy()
    out = np.empty(obs.height)
    sym = obs["symbol"].to_numpy()
    qty = obs["qty"].to_numpy().astype(float)
    sg = obs["sigma"].fill_null(float("nan")).to_numpy().astype(float)
    vv = obs["volume"].fill_null(float("nan")).to_numpy().astype(float)
    for s in np.unique(sym):
        m = sym == s
        out[m] = curve.bps(str(s), qty[m], ts[m], sg[m], vv[m])
    return obs.with_columns(pl.Series("forecast_bps", out))


def log_curve(curve: SlippageCurve, root: str | Path) -> None:
    """Log the saved version file of ``curve`` to the active MLflow run (``slippage/``) with its
    table and figure, and tag the run with the version."""
    import mlflow

    path = Path(root) / f"v{curve.version:06d}.json"
    mlflow.log_artifact(str(path), artifact_path="slippage")
    mlflow.set_tag("slippage_model_version", str(curve.version))
    mlflow.log_table(curve_table(curve).to_pandas(), artifact_file="slippage/curve.json")


@dataclass
class SlippageAwarePolicy(ExecutionPolicy):
    """The execution policy with a limit buffer of at least the slippage model's forecast.

    A limit order's buffer becomes ``max(limit_buffer_bps, forecast)`` for its symbol, size and
    time (the decision bar's), so a limit is marketable by about what a fill is expected to cost.
    """

    curve: SlippageCurve | None = None

    def buffer_bps(self, symbol: str, qty: float, decided_at: datetime | None) -> float:
        """The limit buffer in bps for an order of ``qty`` shares decided at ``decided_at``."""
        base = self.config.limit_buffer_bps
        if self.curve is None or decided_at is None:
            return base
        sg, vv = self.curve.last_estimates.get(symbol, (math.nan, math.nan))
        return max(base, float(self.curve.bps(symbol, qty, _us(decided_at), sg, vv)))

    def plan(self, symbol: str, delta: float, **kw: Any):  # type: ignore[override]
        buf = self.buffer_bps(symbol, delta, kw.get("decided_at"))
        if buf == self.config.limit_buffer_bps:
            return super().plan(symbol, delta, **kw)
        cfg = self.config
        self.config = cfg.model_copy(update={"limit_buffer_bps": buf})
        try:
            return super().plan(symbol, delta, **kw)
        finally:
            self.config = cfg
