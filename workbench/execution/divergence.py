"""Divergence report: a session against the backtest of its own bars, decision by decision.

:func:`replay_backtest` re-runs the backtest on the session's bars with the same predictions
source (the model on batch features), risk policy and costs, deciding from the session's first
bar on (bars before it only warm the policy up, as the session's warm-up does).
:func:`divergence` then matches the two decision by decision, keyed by ``(decision bar,
symbol)``, and explains the difference of their PnL exactly.

**Attribution.** With ``M`` the symbol's last close of the session, a decision's PnL is
``q * (M - px) - commission`` (``q`` signed shares filled, ``px`` the average fill price, ``ref``
the average reference price it filled against). The session-minus-backtest difference of one
decision splits, as an identity, into

* a *quantity* term ``(q_s - q_b) * (M - px_b)``,
* *timing* ``q_s * (ref_b - ref_s)``: the session filled against another bar's price (latency),
* *execution* ``q_s * ((px_b - ref_b) - (px_s - ref_s))``: slippage per share beyond the
  backtest's cost model,
* *costs* ``-(c_s - c_b)``: commission.

A decision traded by one side only (a missed or an extra trade) or in opposite directions, and
the quantity term of a resized one, belong to the *cause* of the difference, with their commission: **signal** (the
session's prediction differs from the backtest's), **denials** (the session's risk engine or the
venue refused or cut what the backtest did), **execution** (the order was only partly filled);
an order that closes a gap opened earlier in the symbol inherits that gap's cause, and what is
left (sizing on an equity that earlier differences moved) is **other**. Borrow and any position
carried into the session are the difference of each side's equity change and its decisions'
sum, booked under **costs**. The buckets add up to the equity difference to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from workbench.backtest import BacktestResult, run_backtest
from workbench.config import BacktestConfig, CostsConfig
from workbench.data.assets import AssetFacts

BUCKETS = ("signal", "execution", "costs", "denials", "timing", "other")
_TS = pl.Datetime("us", "UTC")
_EPS = 1e-9


def replay_backtest(
    bars: pl.DataFrame,
    predictions: pl.DataFrame,
    policy: Any,
    session_start: datetime,
    *,
    costs: CostsConfig | None = None,
    initial_cash: float = 100_000.0,
    assets: Mapping[str, AssetFacts] | None = None,
) -> BacktestResult:
    """Backtest ``bars`` under ``policy`` deciding only from ``session_start`` on.

    ``predictions`` (``symbol, ts, prediction``) is the model on batch features of ``bars``;
    rows before ``session_start`` are dropped (no decision), like the session's warm-up.
    """
    preds = predictions.select("symbol", "ts", "prediction").with_columns(
        pl.when(pl.col("ts") >= session_start).then(pl.col("prediction")).otherwise(None)
    )
    cfg = BacktestConfig(initial_cash=initial_cash, costs=costs or CostsConfig())
    return run_backtest(bars, preds, config=cfg, risk=policy, assets=assets)


@dataclass
class DivergenceReport:
    """The decision-by-decision comparison, the attribution and the summary metrics."""

    decisions: pl.DataFrame
    attribution: dict[str, float]
    metrics: dict[str, float]
    equity: pl.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        """False when the session's bars could not be recovered (see :func:`unavailable`)."""
        return not self.meta.get("unavailable")

    @property
    def reason(self) -> str:
        """Why the report could not be computed (empty when it was)."""
        return str(self.meta.get("unavailable") or "")

    def table(self) -> pl.DataFrame:
        """The attribution as a table (bucket, pnl), total and residual last."""
        rows = [{"bucket": b, "pnl": self.attribution[b]} for b in BUCKETS]
        rows.append({"bucket": "total", "pnl": self.metrics["pnl_diff"]})
        rows.append({"bucket": "residual", "pnl": self.metrics["residual"]})
        return pl.DataFrame(rows)

    def figure(self, title: str = "session vs backtest") -> Any:
        """Plotly figure: both equity curves through the session and the attribution bars."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        if not self.available:
            fig = go.Figure()
            fig.add_annotation(text=f"no divergence report: {self.reason}", showarrow=False,
                               xref="paper", yref="paper", x=0.5, y=0.5, width=900)  # fmt: skip
            fig.update_layout(title=title, height=300)
            return fig
        fig = make_subplots(
            rows=1, cols=2, column_widths=[0.62, 0.38],
            subplot_titles=("equity", "session - backtest PnL by cause"),
        )  # fmt: skip
        eq = self.equity
        x = eq["ts"].dt.convert_time_zone("America/New_York").to_list()
        fig.add_trace(go.Scatter(x=x, y=eq["backtest"].to_list(), name="backtest"), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=eq["session"].to_list(), name="session"), row=1, col=1)
        names = [*BUCKETS, "total"]
        vals = [self.attribution[b] for b in BUCKETS] + [self.metrics["pnl_diff"]]
        fig.add_trace(
            go.Waterfall(
                x=names, y=vals, measure=["relative"] * len(BUCKETS) + ["total"],
                name="attribution", showlegend=False,
            ), row=1, col=2,
        )  # fmt: skip
        fig.update_layout(title=title, height=440)
        return fig


METRIC_KEYS = (
    "decisions", "trades_backtest", "trades_session", "missed_trades", "extra_trades",
    "resized_trades", "partial_fills", "denials_session", "denials_backtest",
    "fill_error_bps_p50", "fill_error_bps_p90", "lag_seconds_p50", "lag_seconds_p90",
    "lag_backtest_seconds_p50", "pnl_session", "pnl_backtest", "pnl_diff",
    *(f"attr_{b}" for b in BUCKETS), "residual",
)  # fmt: skip
"""Every metric of a report (what :func:`divergence` computes)."""


def unavailable(reason: str, *, pnl_session: float = math.nan) -> DivergenceReport:
    """The report of a session whose bars could not be recovered: the reason, the session's
    own PnL, every comparison NaN (logged all the same, so a missing report is never silent)."""
    metrics = dict.fromkeys(METRIC_KEYS, math.nan)
    metrics["pnl_session"] = float(pnl_session)
    eq = pl.DataFrame(schema={"ts": _TS, "session": pl.Float64, "backtest": pl.Float64})
    return DivergenceReport(
        pl.DataFrame(), dict.fromkeys(BUCKETS, math.nan), metrics, eq, {"unavailable": reason}
    )


def divergence(
    session: Any,
    backtest: BacktestResult,
    bars: pl.DataFrame,
    session_start: datetime,
    *,
    backtest_predictions: pl.DataFrame | None = None,
) -> DivergenceReport:
    """Compare a session (:class:`~workbench.execution.engine.SessionResult`) with the backtest
    of its bars (:func:`replay_backtest`) decision by decision and attribute the PnL difference.

    Parameters
    ----------
    session : SessionResult
        The session's fills, decisions, orders, risk denials and broker orders.
    backtest : BacktestResult
        The backtest of the same bars under the same policy and costs (risk-policy run).
    bars : pl.DataFrame
        The bars both saw (the session's marks come from them).
    session_start : datetime
        The session's first bar.
    backtest_predictions : pl.DataFrame, optional
        ``symbol, ts, prediction`` the backtest decided on (compared with the session's own).
    """
    if backtest.orders is None:
        raise ValueError(
            "divergence needs a risk-policy backtest (run_backtest(..., risk=policy)); "
            "use replay_backtest."
        )
    marks = dict(
        bars.filter(pl.col("ts") >= session_start)
        .sort("ts")
        .group_by("symbol")
        .agg(pl.col("close").last())
        .iter_rows()
    )
    bt_f = _agg(
        backtest.fills.filter(pl.col("decision_ts") >= session_start).rename(
            {"decision_ts": "decided_at"}
        )
    )
    s_fills = _attach_decisions(session.fills, session.orders)
    ses_f = _agg(s_fills)
    keys = _keys(session, backtest, session_start, bt_f, ses_f)
    d = (
        keys.join(bt_f, on=["decided_at", "symbol"], how="left")
        .join(ses_f, on=["decided_at", "symbol"], how="left", suffix="_s")
        .join(_ordered(backtest.orders, session_start), on=["decided_at", "symbol"], how="left")
        .join(
            _ordered(session.orders, session_start),
            on=["decided_at", "symbol"],
            how="left",
            suffix="_s",
        )
        .join(_denied(backtest.rejections, session_start), on=["decided_at", "symbol"], how="left")
        .join(
            _denied(session.rejections, session_start),
            on=["decided_at", "symbol"],
            how="left",
            suffix="_s",
        )
        .join(_preds(session.decisions, "pred_s"), on=["decided_at", "symbol"], how="left")
    )
    if backtest_predictions is not None:
        d = d.join(_preds(backtest_predictions, "pred_b"), on=["decided_at", "symbol"], how="left")
    else:
        d = d.with_columns(pl.col("pred_s").alias("pred_b"))
    venue_refused = _venue_refused(session)
    d = d.sort("decided_at", "symbol")
    rows = _attribute(d.to_dicts(), marks, venue_refused)
    dec = pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("decided_at").cast(_TS))
    eq = _equity(session, backtest, session_start)
    s_change = float(eq["session"][-1] - eq["session_start"][0]) if eq.height else 0.0
    b_change = float(eq["backtest"][-1] - eq["backtest_start"][0]) if eq.height else 0.0
    eq = eq.drop("session_start", "backtest_start")
    # borrow and carried positions: each side's equity change less its decisions' PnL
    carry_s = s_change - float(dec["pnl_s"].sum()) if dec.height else s_change
    carry_b = b_change - float(dec["pnl_b"].sum()) if dec.height else b_change
    attribution = {b: float(dec[b].sum()) if dec.height else 0.0 for b in BUCKETS}
    attribution["costs"] += carry_s - carry_b
    diff = s_change - b_change
    metrics = _metrics(dec, session, backtest, session_start, attribution, diff, s_change, b_change)
    return DivergenceReport(
        dec, attribution, metrics, eq, {"carry_session": carry_s, "carry_backtest": carry_b}
    )


# ---------------------------------------------------------------------- frames


def _agg(fills: pl.DataFrame) -> pl.DataFrame:
    """Fills summed per decision: qty, average reference and fill price, commission, times."""
    f = fills.filter(pl.col("decided_at").is_not_null())
    return f.group_by("decided_at", "symbol").agg(
        pl.col("qty").sum().alias("q"),
        ((pl.col("qty") * pl.col("ref_price")).sum() / pl.col("qty").sum()).alias("ref"),
        ((pl.col("qty") * pl.col("price")).sum() / pl.col("qty").sum()).alias("px"),
        pl.col("commission").sum().alias("c"),
        pl.col("ts").min().alias("first_fill"),
        pl.col("ts").max().alias("last_fill"),
        pl.len().alias("n_fills"),
    )


def _attach_decisions(fills: pl.DataFrame, orders: pl.DataFrame) -> pl.DataFrame:
    """Session fills with a decision bar; a fill of a re-sent order without one gets the
    symbol's last decided order before it."""
    f = fills.with_columns(pl.col("decided_at").cast(_TS), pl.col("ts").cast(_TS))
    if f.filter(pl.col("decided_at").is_null()).is_empty() or orders.height == 0:
        return f
    dec = orders.select(pl.col("decision_ts").cast(_TS).alias("_d"), "symbol").unique().sort("_d")
    miss = (
        f.filter(pl.col("decided_at").is_null())
        .sort("ts")
        .join_asof(dec, left_on="ts", right_on="_d", by="symbol", strategy="backward")
        .with_columns(pl.col("_d").alias("decided_at"))
        .drop("_d")
    )
    return pl.concat([f.filter(pl.col("decided_at").is_not_null()), miss])


def _ordered(orders: pl.DataFrame, start: datetime) -> pl.DataFrame:
    return (
        orders.filter(pl.col("decision_ts") >= start)
        .group_by("decision_ts", "symbol")
        .agg(pl.col("qty").sum().alias("ordered"), pl.col("reason").last().alias("reason"))
        .rename({"decision_ts": "decided_at"})
        .with_columns(pl.col("decided_at").cast(_TS))
    )


def _denied(rej: pl.DataFrame, start: datetime) -> pl.DataFrame:
    r = rej.filter((pl.col("decision_ts") >= start) & (pl.col("reason") != "end_of_data"))
    return (
        r.group_by("decision_ts", "symbol")
        .agg(pl.col("reason").sort().str.join(",").alias("denied"))
        .rename({"decision_ts": "decided_at"})
        .with_columns(pl.col("decided_at").cast(_TS))
    )


def _preds(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    return frame.select(
        pl.col("ts").cast(_TS).alias("decided_at"), "symbol", pl.col("prediction").alias(name)
    ).unique(["decided_at", "symbol"], keep="last")


def _keys(session: Any, bt: BacktestResult, start: datetime, bt_f, ses_f) -> pl.DataFrame:
    parts = [
        bt_f.select("decided_at", "symbol"),
        ses_f.select("decided_at", "symbol"),
        _ordered(bt.orders, start).select("decided_at", "symbol"),
        _ordered(session.orders, start).select("decided_at", "symbol"),
        _denied(bt.rejections, start).select("decided_at", "symbol"),
        _denied(session.rejections, start).select("decided_at", "symbol"),
    ]
    return pl.concat([p.with_columns(pl.col("decided_at").cast(_TS)) for p in parts]).unique()


def _venue_refused(session: Any) -> set[tuple[Any, str]]:
    """(decision bar, symbol) of session orders the venue rejected or that were refused."""
    bo = getattr(session, "broker_orders", None)
    if bo is None or bo.height == 0 or "status" not in bo.columns:
        return set()
    bad = bo.filter(pl.col("status").is_in(["rejected", "refused"]))
    if bad.height == 0:
        return set()
    out = set()
    dec_col = "decided_at" if "decided_at" in bad.columns else None
    for r in bad.iter_rows(named=True):
        if dec_col and r.get(dec_col) is not None:
            out.add((r[dec_col], r["symbol"]))
        else:
            out.add((None, r["symbol"]))
    return out


# ---------------------------------------------------------------------- attribution


def _z(v: Any) -> float:
    return 0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _same_pred(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)), abs(float(b)))


def _attribute(
    rows: list[dict], marks: dict[str, float], venue_refused: set[tuple[Any, str]]
) -> list[dict]:
    gap: dict[str, float] = {}
    cause: dict[str, str] = {}
    out = []
    for r in rows:
        sym = r["symbol"]
        m = float(marks.get(sym, math.nan))
        qb, qs = _z(r.get("q")), _z(r.get("q_s"))
        cb, cs = _z(r.get("c")), _z(r.get("c_s"))
        ref_s = r.get("ref_s") if qs else None
        px_s = r.get("px_s") if qs else None
        ref_b = r.get("ref") if qb else ref_s
        px_b = r.get("px") if qb else ref_s
        ref_s = ref_b if ref_s is None else ref_s
        px_s = ref_s if px_s is None else px_s
        ref_b = _z(ref_b)
        px_b = _z(px_b)
        ref_s = _z(ref_s)
        px_s = _z(px_s)
        pnl_b = qb * (m - px_b) - cb if qb else -cb
        pnl_s = qs * (m - px_s) - cs if qs else -cs
        quantity = (qs - qb) * (m - px_b)
        timing = qs * (ref_b - ref_s)
        execution = qs * ((px_b - ref_b) - (px_s - ref_s))
        commission = -(cs - cb)
        b = dict.fromkeys(BUCKETS, 0.0)
        same_q = abs(qs - qb) <= _EPS * max(1.0, abs(qb))
        why = ""
        if same_q:
            b["timing"], b["execution"], b["costs"] = timing, execution, commission
        else:
            why = _cause(r, sym, qs, qb, gap, cause, venue_refused)
            if qs * qb <= 0.0:  # missed, extra or reversed: everything belongs to the cause
                b[why] += quantity + timing + execution + commission
            else:
                b[why] += quantity + commission
                b["timing"] += timing
                b["execution"] += execution
        g0 = gap.get(sym, 0.0)
        g1 = g0 + (qs - qb)
        if abs(g1) <= _EPS * max(1.0, abs(qb), abs(qs)):
            gap.pop(sym, None)
            cause.pop(sym, None)
        else:
            if (abs(g0) <= _EPS or g0 * g1 < 0 or abs(g1) > abs(g0)) and why:
                cause[sym] = why
            gap[sym] = g1
        status = (
            "matched" if qb and qs and same_q else
            "missed" if qb and not qs else
            "extra" if qs and not qb else
            "resized" if qb and qs else "no_trade"
        )  # fmt: skip
        lag = (
            (r["first_fill_s"] - r["decided_at"]).total_seconds()
            if r.get("first_fill_s") is not None else None
        )  # fmt: skip
        lag_b = (
            (r["first_fill"] - r["decided_at"]).total_seconds()
            if r.get("first_fill") is not None else None
        )  # fmt: skip
        sign = 1.0 if (qs or qb) > 0 else -1.0
        err = (
            sign * (px_s / px_b - 1.0) * 1e4 if qs and qb and px_b else None
        )  # session paid more: positive
        out.append({
            "decided_at": r["decided_at"], "symbol": sym, "status": status, "cause": why or None,
            "pred_b": r.get("pred_b"), "pred_s": r.get("pred_s"),
            "ordered_b": _z(r.get("ordered")), "ordered_s": _z(r.get("ordered_s")),
            "q_b": qb, "q_s": qs, "ref_b": ref_b if qb else None, "ref_s": ref_s if qs else None,
            "px_b": px_b if qb else None, "px_s": px_s if qs else None,
            "commission_b": cb, "commission_s": cs,
            "denied_b": r.get("denied"), "denied_s": r.get("denied_s"),
            "partial": bool(qs and abs(_z(r.get("ordered_s"))) > abs(qs) + _EPS),
            "fill_error_bps": err, "lag_s": lag, "lag_b": lag_b,
            "n_fills_s": int(_z(r.get("n_fills_s"))),
            "pnl_b": pnl_b, "pnl_s": pnl_s, **b,
        })  # fmt: skip
    return out


def _cause(r, sym, qs, qb, gap, cause, venue_refused) -> str:
    if not _same_pred(r.get("pred_s"), r.get("pred_b")):
        return "signal"
    if (r.get("denied_s") or "") != (r.get("denied") or ""):
        return "denials"
    ordered_s = _z(r.get("ordered_s"))
    refused = (r["decided_at"], sym) in venue_refused or (None, sym) in venue_refused
    if refused and abs(qs) < abs(ordered_s) - _EPS:
        return "denials"
    if ordered_s and abs(qs) < abs(ordered_s) - _EPS:
        return "execution"  # partly filled (or not at all) at the venue
    g0 = gap.get(sym, 0.0)
    if abs(g0) > _EPS and sym in cause and abs(g0 + (qs - qb)) < abs(g0):
        return cause[sym]  # closes a gap opened earlier: the earlier cause
    return "other"


def _equity(session: Any, bt: BacktestResult, start: datetime) -> pl.DataFrame:
    """Both equity curves on the session's bars, with each side's equity before the session."""
    ses = session.pnl.select(pl.col("ts").cast(_TS), pl.col("equity").alias("session"))
    beq = bt.equity.select(pl.col("ts").cast(_TS), pl.col("equity").alias("backtest"))
    before = beq.filter(pl.col("ts") < start)
    b0 = float(before["backtest"][-1]) if before.height else float(bt.config.initial_cash)
    s0 = (
        float(session.pnl["equity"][0] - session.pnl["pnl"][0])
        if session.pnl.height
        else float(bt.config.initial_cash)
    )
    out = ses.join(beq, on="ts", how="left").sort("ts")
    return out.with_columns(pl.lit(s0).alias("session_start"), pl.lit(b0).alias("backtest_start"))


def _q(v: pl.Series, q: float) -> float:
    v = v.drop_nulls()
    return float(np.quantile(v.to_numpy(), q)) if v.len() else float("nan")


def _metrics(dec, session, bt, start, attribution, diff, s_change, b_change) -> dict[str, float]:
    n_rej_s = session.rejections.filter(
        (pl.col("decision_ts") >= start) & (pl.col("reason") != "end_of_data")
    ).height
    n_rej_b = bt.rejections.filter(
        (pl.col("decision_ts") >= start) & (pl.col("reason") != "end_of_data")
    ).height
    st = dec["status"] if dec.height else pl.Series([], dtype=pl.String)
    m = {
        "decisions": float(dec.height),
        "trades_backtest": float((dec["q_b"] != 0).sum()) if dec.height else 0.0,
        "trades_session": float((dec["q_s"] != 0).sum()) if dec.height else 0.0,
        "missed_trades": float((st == "missed").sum()),
        "extra_trades": float((st == "extra").sum()),
        "resized_trades": float((st == "resized").sum()),
        "partial_fills": float(dec["partial"].sum()) if dec.height else 0.0,
        "denials_session": float(n_rej_s),
        "denials_backtest": float(n_rej_b),
        "fill_error_bps_p50": _q(dec["fill_error_bps"], 0.5) if dec.height else math.nan,
        "fill_error_bps_p90": _q(dec["fill_error_bps"], 0.9) if dec.height else math.nan,
        "lag_seconds_p50": _q(dec["lag_s"], 0.5) if dec.height else math.nan,
        "lag_seconds_p90": _q(dec["lag_s"], 0.9) if dec.height else math.nan,
        "lag_backtest_seconds_p50": _q(dec["lag_b"], 0.5) if dec.height else math.nan,
        "pnl_session": s_change,
        "pnl_backtest": b_change,
        "pnl_diff": diff,
        **{f"attr_{b}": v for b, v in attribution.items()},
    }
    m["residual"] = diff - sum(attribution.values())
    return m


# ---------------------------------------------------------------------- MLflow

DIVERGENCE_TAG = "workbench.divergence"
"""Model-version tag prefix of the latest session's divergence summary (``.<metric>``, ``.run_id``)."""
SUMMARY_KEYS = (
    "pnl_session", "pnl_backtest", "pnl_diff", "attr_signal", "attr_execution", "attr_costs",
    "attr_denials", "attr_timing", "attr_other", "missed_trades", "extra_trades",
    "fill_error_bps_p50", "fill_error_bps_p90", "lag_seconds_p50", "partial_fills",
    "denials_session",
)  # fmt: skip


def log_divergence(
    report: DivergenceReport,
    model: Any,
    *,
    session_id: str,
    session_date: str,
    parent_run_id: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> str:
    """Log the report as its own MLflow run (metrics, attribution table, decision table, figure)
    tagged with the model's name, version and alias, and write the summary on the model
    version (tags ``workbench.divergence.<metric>`` and ``.run_id``); return the run id.

    Under an active run the report is its child (``parent_run_id`` overrides).
    """
    import mlflow

    from workbench.models.registry import set_version_tag

    tags = {
        "model_name": model.name, "model_version": str(model.version),
        "model_alias": model.alias or "", "session_id": session_id,
        "session_date": session_date, "report": "divergence",
        "divergence_status": "ok" if report.available else "unavailable",
        **({} if report.available else {"divergence_reason": report.reason[:5000]}),
        **(extra_tags or {}),
    }  # fmt: skip
    active = mlflow.active_run()
    parent = parent_run_id or (active.info.run_id if active is not None else None)
    kw: dict[str, Any] = {"run_name": f"divergence {session_date}", "tags": tags}
    if parent:
        kw["parent_run_id"] = parent
    if active is not None:
        kw["nested"] = True
    with mlflow.start_run(**kw) as run:
        clean = {k: v for k, v in report.metrics.items() if math.isfinite(v)}
        mlflow.log_metrics(clean)
        model_id = _logged_model_id(model)
        if model_id:  # the summary also on the logged model's page, linked to this run
            mlflow.log_metrics(
                {f"divergence_{k}": clean[k] for k in SUMMARY_KEYS if k in clean},
                model_id=model_id,
            )
        if not report.available:
            mlflow.log_text(report.reason, "divergence/unavailable.txt")
        mlflow.log_table(report.table().to_pandas(), artifact_file="divergence/attribution.json")
        dec = report.decisions
        if dec.height:
            mlflow.log_table(
                dec.with_columns(pl.col("decided_at").cast(pl.String)).to_pandas(),
                artifact_file="divergence/decisions.json",
            )
        mlflow.log_figure(
            report.figure(f"{model.name} v{model.version} on {session_date}: session vs backtest"),
            "divergence/divergence.html",
        )
        run_id = run.info.run_id
    stale = []
    for k in SUMMARY_KEYS:
        v = report.metrics.get(k)
        if v is not None and math.isfinite(v):
            set_version_tag(model, f"{DIVERGENCE_TAG}.{k}", f"{v:.6g}")
        else:
            stale.append(f"{DIVERGENCE_TAG}.{k}")  # an earlier session's value would mislead
    set_version_tag(model, f"{DIVERGENCE_TAG}.run_id", run_id)
    set_version_tag(model, f"{DIVERGENCE_TAG}.session", session_id)
    set_version_tag(model, f"{DIVERGENCE_TAG}.status", tags["divergence_status"])
    if report.available:
        stale.append(f"{DIVERGENCE_TAG}.reason")
    else:
        set_version_tag(model, f"{DIVERGENCE_TAG}.reason", report.reason[:5000])
    _drop_version_tags(model, stale)
    return run_id


def _drop_version_tags(model: Any, keys: list[str]) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        have = client.get_model_version(model.name, str(model.version)).tags
    except MlflowException:
        return
    for k in keys:
        if k in have:
            client.delete_model_version_tag(model.name, str(model.version), k)


def _logged_model_id(model: Any) -> str | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mv = mlflow.MlflowClient().get_model_version(model.name, str(model.version))
    except MlflowException:
        return None
    found = getattr(mv, "model_id", None)
    src = mv.source or ""
    if not found and src.startswith("models:/m-"):
        found = src[len("models:/") :].split("/")[0]
    return found or None


def divergence_history(model_name: str, version: str | None = None) -> pl.DataFrame:
    """Every divergence report logged for ``model_name`` (one version, or all): one row per
    session with its run id, PnL of session and backtest and the attribution, oldest first."""
    import mlflow

    flt = f"tags.report = 'divergence' and tags.model_name = '{model_name}'"
    if version:
        flt += f" and tags.model_version = '{version}'"
    runs = mlflow.MlflowClient().search_runs(
        [e.experiment_id for e in mlflow.search_experiments()], flt, max_results=50_000,
        order_by=["attributes.start_time ASC"],
    )  # fmt: skip
    cols = ["pnl_session", "pnl_backtest", "pnl_diff", *(f"attr_{b}" for b in BUCKETS),
            "missed_trades", "extra_trades", "fill_error_bps_p50", "fill_error_bps_p90",
            "lag_seconds_p50"]  # fmt: skip
    rows = [
        {
            "session_date": r.data.tags.get("session_date", ""),
            "session_id": r.data.tags.get("session_id", ""),
            "version": r.data.tags.get("model_version", ""),
            "run_id": r.info.run_id,
            "status": r.data.tags.get("divergence_status", "ok"),
            "reason": r.data.tags.get("divergence_reason", ""),
            **{c: r.data.metrics.get(c, math.nan) for c in cols},
        }
        for r in runs
    ]
    schema = {"session_date": pl.String, "session_id": pl.String, "version": pl.String,
              "run_id": pl.String, "status": pl.String, "reason": pl.String,
              **dict.fromkeys(cols, pl.Float64)}  # fmt: skip
    return pl.DataFrame(rows, schema=schema).unique(
        ["session_id", "version"], keep="last", maintain_order=True
    )


def history_figure(history: pl.DataFrame, title: str = "sessions vs their backtests") -> Any:
    """Plotly figure: per session, the attribution of session - backtest PnL (stacked bars) and
    both PnLs (lines)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    x = history["session_date"].to_list()
    for b in BUCKETS:
        fig.add_trace(go.Bar(x=x, y=history[f"attr_{b}"].to_list(), name=b))
    fig.add_trace(go.Scatter(x=x, y=history["pnl_session"].to_list(), name="session PnL",
                             mode="lines+markers"))  # fmt: skip
    fig.add_trace(go.Scatter(x=x, y=history["pnl_backtest"].to_list(), name="backtest PnL",
                             mode="lines+markers", line={"dash": "dot"}))  # fmt: skip
    fig.update_layout(barmode="relative", title=title, height=440, yaxis_title="$")
    return fig
