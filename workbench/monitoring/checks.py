"""Operational checks besides drift: staleness, execution lag, performance anomalies, model age.

Each returns a frame (one row per symbol, order or session) and :func:`check_alerts` turns the
frames into alerts with the ``monitoring.*`` thresholds.

* **Staleness**: a symbol's last stored bar against the calendar's last complete bar at ``now``
  (:func:`workbench.data.calendar.last_expected_bar`): bars behind, counted on the calendar.
* **Execution lag** (from the order ledger): decision (the close of the decision bar,
  ``bar_ts + timeframe``), submit (the broker's acknowledgement), first fill. In replay the
  session clock is the bar, so lags are in bar time there.
* **Performance anomalies**: per session, the return on the starting equity and the hit rate
  (share of bars with a positive PnL among bars with a non-zero one), for the live sessions and
  for a backtest of the same strategy; the mean of the last ``anomaly_window`` live sessions is
  compared with the backtest's distribution of rolling means of that window: ``p`` is the share of
  backtest windows as bad or worse (low p: the live results are unusually bad).
* **Model age**: days since the version was registered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from workbench.config import MonitoringConfig
from workbench.data.calendar import expected_bars, last_expected_bar
from workbench.data.timeframe import Timeframe
from workbench.monitoring.alerts import Alert

NY = ZoneInfo("America/New_York")
_TS = pl.Datetime("us", "UTC")

STALENESS_SCHEMA = {
    "symbol": pl.String,
    "last_bar": _TS,
    "expected_bar": _TS,
    "bars_behind": pl.Int64,
    "seconds_behind": pl.Float64,
}
LAG_SCHEMA = {
    "session_id": pl.String,
    "client_order_id": pl.String,
    "symbol": pl.String,
    "decided_at": _TS,
    "submitted_at": _TS,
    "filled_at": _TS,
    "decision_to_submit": pl.Float64,
    "submit_to_fill": pl.Float64,
    "decision_to_fill": pl.Float64,
}
PERF_SCHEMA = {"session": pl.Date, "ret": pl.Float64, "hit_rate": pl.Float64, "bars": pl.Int64}


# ------------------------------------------------------------------------------------ staleness


def staleness(
    last_bars: Mapping[str, datetime | None],
    timeframe: str,
    now: datetime,
    calendar: str = "XNYS",
) -> pl.DataFrame:
    """Bars each symbol is behind the calendar's last complete bar at ``now``.

    ``last_bars`` maps symbol -> its last bar's start (None: no bar at all, ``bars_behind`` null).
    """
    tf = Timeframe.parse(timeframe)
    expected = last_expected_bar(tf, now, calendar)
    rows = []
    for sym, last in sorted(last_bars.items()):
        behind: int | None
        if last is None or expected is None:
            behind = None if last is None else 0
        elif last >= expected:
            behind = 0
        else:
            stamps = expected_bars(tf, last, expected, calendar)  # [last, expected)
            behind = int((stamps > last).sum()) + 1
        rows.append(
            {
                "symbol": sym, "last_bar": last, "expected_bar": expected, "bars_behind": behind,
                "seconds_behind": (expected - last).total_seconds()
                if last is not None and expected is not None and last < expected else 0.0,
            }
        )  # fmt: skip
    return pl.DataFrame(rows, schema=STALENESS_SCHEMA)


def store_last_bars(
    store: Any, symbols: Sequence[str], timeframe: str
) -> dict[str, datetime | None]:
    """The last stored bar of each symbol (None when it has none)."""
    out: dict[str, datetime | None] = dict.fromkeys(symbols)
    have = [s for s in symbols if s in set(store.symbols(timeframe))]
    if have:
        last = (
            store.scan(have, timeframe).group_by("symbol").agg(pl.col("ts").max())
            .collect(engine="in-memory")
        )  # fmt: skip
        out.update(dict(last.iter_rows()))
    return out


# ------------------------------------------------------------------------------------ lag


def execution_lag(
    frames: Mapping[str, pl.DataFrame], timeframe: str, session_id: str = ""
) -> pl.DataFrame:
    """Decision -> submit -> first fill per filled or acknowledged order, from a session's ledger
    frames (:meth:`OrderLedger.frames`): seconds, negatives clipped to 0."""
    tf = Timeframe.parse(timeframe)
    intents, trans, fills = frames["intents"], frames["transitions"], frames["fills"]
    if intents.is_empty():
        return pl.DataFrame(schema=LAG_SCHEMA)
    acks = (
        trans.filter(pl.col("intent_cid").is_not_null())
        .group_by("intent_cid").agg(pl.col("ts").min().alias("submitted_at"))
    )  # fmt: skip
    orders = frames["orders"].select("client_order_id", "intent_cid")
    first_fill = (
        fills.join(orders, on="client_order_id", how="left")
        .with_columns(pl.coalesce("intent_cid", "client_order_id").alias("intent_cid"))
        .group_by("intent_cid").agg(pl.col("ts").min().alias("filled_at"))
    )  # fmt: skip
    secs = lambda a, b: ((pl.col(b) - pl.col(a)).dt.total_microseconds() / 1e6).clip(0.0)  # noqa: E731
    return (
        intents.select(
            pl.lit(session_id).alias("session_id"), "client_order_id", "symbol",
            (pl.col("bar_ts") + tf.delta).alias("decided_at"),
        )
        .join(acks, left_on="client_order_id", right_on="intent_cid", how="left")
        .join(first_fill, left_on="client_order_id", right_on="intent_cid", how="left")
        .filter(pl.col("submitted_at").is_not_null())
        .with_columns(
            secs("decided_at", "submitted_at").alias("decision_to_submit"),
            secs("submitted_at", "filled_at").alias("submit_to_fill"),
            secs("decided_at", "filled_at").alias("decision_to_fill"),
        )
        .select(list(LAG_SCHEMA))
        .cast(LAG_SCHEMA)  # type: ignore[arg-type]
    )  # fmt: skip


def ledger_lags(ledger: Any, sessions: Iterable[Any], timeframe: str) -> pl.DataFrame:
    """:func:`execution_lag` of several ledger sessions (records of ``OrderLedger.sessions``)."""
    parts = [execution_lag(ledger.frames(s.session_id), timeframe, s.session_id) for s in sessions]
    return pl.concat(parts) if parts else pl.DataFrame(schema=LAG_SCHEMA)


def lag_summary(lags: pl.DataFrame) -> dict[str, float]:
    """Median and p95 of each lag (seconds; NaN without orders)."""
    out: dict[str, float] = {"orders": float(lags.height)}
    for c in ("decision_to_submit", "submit_to_fill", "decision_to_fill"):
        v = lags[c].drop_nulls().to_numpy() if lags.height else np.empty(0)
        out[f"{c}_p50"] = float(np.quantile(v, 0.5)) if v.size else float("nan")
        out[f"{c}_p95"] = float(np.quantile(v, 0.95)) if v.size else float("nan")
    return out


# ------------------------------------------------------------------------------------ performance


def sessions_performance(equity: pl.DataFrame) -> pl.DataFrame:
    """Per New York session: return on the equity before its first bar, hit rate, bars.

    ``equity``: ``ts, equity`` per bar (a backtest's equity frame or a session's PnL frame);
    the first bar's PnL is measured from the previous bar's equity (the start of the frame for
    the first session)."""
    if equity.is_empty():
        return pl.DataFrame(schema=PERF_SCHEMA)
    e = (
        equity.sort("ts")
        .select(
            pl.col("ts").dt.convert_time_zone("America/New_York").dt.date().alias("session"),
            pl.col("equity").cast(pl.Float64),
        )
        .with_columns(prev=pl.col("equity").shift(1).fill_null(pl.col("equity").first()))
    )
    return (
        e.with_columns(pnl=pl.col("equity") - pl.col("prev"))
        .group_by("session", maintain_order=True)
        .agg(
            ((pl.col("equity").last() - pl.col("prev").first()) / pl.col("prev").first()).alias("ret"),
            ((pl.col("pnl") > 0).sum() / (pl.col("pnl") != 0).sum()).fill_nan(None).alias("hit_rate"),
            pl.len().cast(pl.Int64).alias("bars"),
        )
        .cast(PERF_SCHEMA)  # type: ignore[arg-type]
    )  # fmt: skip


def ledger_equity(ledger: Any, session: Any, bars: pl.DataFrame) -> pl.DataFrame:
    """A ledger session's equity per bar (``ts, equity``): its starting cash and carried
    positions, its fills (booked at their bar), marked at the bars' closes."""
    sid = session.session_id
    cash0 = float((session.params or {}).get("initial_cash", 0.0))
    start = ledger.snapshot(sid, "start") or {}
    fills = [r.fill for r in ledger.fills(sid)]
    day = session.session_date
    b = bars.filter(pl.col("ts").dt.convert_time_zone("America/New_York").dt.date() == day)
    if b.is_empty():
        return pl.DataFrame(schema={"ts": _TS, "equity": pl.Float64})
    closes = (
        b.pivot(on="symbol", index="ts", values="close").sort("ts").fill_null(strategy="forward")
    )
    syms = [c for c in closes.columns if c != "ts"]
    pos = {s: float(start.get(s, 0.0)) for s in syms}
    cash = cash0  # carried positions are part of the account's equity: cash0 is its cash
    f_sorted = sorted(fills, key=lambda f: f.ts)
    k, out = 0, []
    for row in closes.iter_rows(named=True):
        t = row["ts"]
        while k < len(f_sorted) and f_sorted[k].ts <= t:
            f = f_sorted[k]
            pos[f.symbol] = pos.get(f.symbol, 0.0) + f.qty
            cash -= f.qty * f.price + f.commission
            k += 1
        value = sum(q * (row.get(s) or 0.0) for s, q in pos.items())
        out.append({"ts": t, "equity": cash + value})
    return pl.DataFrame(out, schema={"ts": _TS, "equity": pl.Float64})


def anomalies(live: pl.DataFrame, backtest: pl.DataFrame, window: int = 5) -> pl.DataFrame:
    """The last ``window`` live sessions' mean return and hit rate against the backtest's rolling
    means of the same window: ``metric, live, backtest_median, p`` (``p``: share of backtest
    windows at or below the live value; NaN when either side has fewer than ``window`` sessions)."""
    rows = []
    for metric in ("ret", "hit_rate"):
        lv = live[metric].drop_nulls().to_numpy()[-window:] if live.height else np.empty(0)
        bv = backtest[metric].drop_nulls().to_numpy() if backtest.height else np.empty(0)
        if lv.size < window or bv.size < window:
            rows.append({"metric": metric, "live": float(lv.mean()) if lv.size else float("nan"),
                         "backtest_median": float("nan"), "p": float("nan"), "window": window})  # fmt: skip
            continue
        roll = np.convolve(bv, np.ones(window) / window, mode="valid")
        m = float(lv.mean())
        rows.append(
            {"metric": metric, "live": m, "backtest_median": float(np.median(roll)),
             "p": float((roll <= m + 1e-15).mean()), "window": window}
        )  # fmt: skip
    return pl.DataFrame(rows)


# ------------------------------------------------------------------------------------ model age


def model_age_days(created: datetime | float | int, now: datetime | None = None) -> float:
    """Days since ``created`` (a datetime or MLflow's milliseconds since the epoch)."""
    if not isinstance(created, datetime):
        created = datetime.fromtimestamp(float(created) / 1000.0, tz=UTC)
    return ((now or datetime.now(UTC)) - created).total_seconds() / 86400.0


# ------------------------------------------------------------------------------------ alerts


def check_alerts(
    cfg: MonitoringConfig,
    *,
    model: str = "",
    staleness_frame: pl.DataFrame | None = None,
    quality: Any = None,
    lags: pl.DataFrame | None = None,
    anomaly_frame: pl.DataFrame | None = None,
    age_days: float | None = None,
) -> list[Alert]:
    """Alerts of the non-drift checks under the ``monitoring.*`` thresholds."""
    out: list[Alert] = []
    if staleness_frame is not None:
        for r in staleness_frame.iter_rows(named=True):
            n = r["bars_behind"]
            if n is None:
                out.append(Alert("critical", "staleness", f"{r['symbol']} has no bars at all",
                                 {"symbol": r["symbol"]}, key=r["symbol"]))  # fmt: skip
            elif n > cfg.stale_warn_bars:
                sev = "critical" if n >= cfg.stale_alert_bars else "warning"
                out.append(
                    Alert(sev, "staleness",
                          f"{r['symbol']} is {n} bars behind the calendar (last {r['last_bar']:%Y-%m-%d %H:%M}Z)",
                          {"symbol": r["symbol"], "bars_behind": n, "expected_bar": str(r["expected_bar"])},
                          key=r["symbol"])
                )  # fmt: skip
    if quality is not None:
        for r in quality.findings.filter(pl.col("severity") != "info").iter_rows(named=True):
            if r["check"] == "stale":
                continue  # the staleness check above owns it
            sev = "critical" if r["severity"] == "error" else "warning"
            out.append(Alert(sev, "data_quality", f"{r['check']} on {r['symbol']}: {r['detail']}",
                             {"check": r["check"], "symbol": r["symbol"], "count": r["count"]},
                             key=f"{r['check']}:{r['symbol']}"))  # fmt: skip
    if lags is not None and lags.height:
        p95 = lag_summary(lags)["decision_to_fill_p95"]
        if np.isfinite(p95) and p95 >= cfg.lag_warn_seconds:
            sev = "critical" if p95 >= cfg.lag_alert_seconds else "warning"
            out.append(Alert(sev, "execution_lag", f"decision -> fill p95 is {p95:.1f} s",
                             {**lag_summary(lags)}, key=model))  # fmt: skip
    if anomaly_frame is not None:
        for r in anomaly_frame.iter_rows(named=True):
            p = r["p"]
            if p is None or not np.isfinite(p) or p > cfg.anomaly_warn_p:
                continue
            sev = "critical" if p <= cfg.anomaly_alert_p else "warning"
            out.append(Alert(
                sev, "performance",
                f"{model}: mean {r['metric']} of the last {r['window']} sessions ({r['live']:.4g}) is "
                f"below {1 - p:.1%} of the backtest's windows",
                {k: r[k] for k in ("metric", "live", "backtest_median", "p")}, key=f"{model}:{r['metric']}",
            ))  # fmt: skip
    if age_days is not None and age_days >= cfg.model_age_warn_days:
        sev = "critical" if age_days >= cfg.model_age_alert_days else "warning"
        out.append(Alert(sev, "model_age", f"{model} is {age_days:.1f} days old",
                         {"age_days": age_days, "model": model}, key=model))  # fmt: skip
    return out


def sessions_window(end: date, n: int, calendar: str = "XNYS") -> list[date]:
    """The last ``n`` sessions up to ``end`` (inclusive)."""
    from datetime import timedelta

    from workbench.data.calendar import sessions

    s = sessions(end - timedelta(days=2 * n + 10), end, calendar)["session"].to_list()
    return s[-n:]
