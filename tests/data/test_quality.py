"""Data-quality report: each check on a frame built to trip it, severity, text, figure, raise."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from workbench.data.calendar import bar_starts
from workbench.data.quality import (
    FINDINGS_SCHEMA,
    QualityThresholds,
    check_quality,
    check_store,
)
from workbench.data.schema import validate_bars
from workbench.data.store import BarStore
from workbench.errors import DataQualityError

START, END = date(2024, 1, 2), date(2024, 1, 12)  # 9 sessions (Jan 2-5, 8-12)
NOW = datetime(2024, 2, 1, tzinfo=UTC)


def clean(
    symbols=("AAA", "BBB"), tf: str = "5Min", start=START, end=END, seed: int = 0
) -> pl.DataFrame:
    stamps = bar_starts(tf, start, end)
    rng = np.random.default_rng(seed)
    frames = []
    for k, s in enumerate(symbols):
        n = stamps.len()
        c = 50.0 * (k + 1) * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
        o = np.r_[c[0], c[:-1]]
        hi, lo = np.maximum(o, c) * 1.0005, np.minimum(o, c) * 0.9995
        frames.append(
            pl.DataFrame(
                {
                    "symbol": s,
                    "ts": stamps,
                    "open": o,
                    "high": hi,
                    "low": lo,
                    "close": c,
                    "volume": rng.integers(100, 1000, n).astype(float),
                    "vwap": (hi + lo) / 2,
                    "trade_count": rng.integers(1, 50, n),
                }
            )
        )
    return validate_bars(pl.concat(frames))


def run(df: pl.DataFrame, **kw):
    args = {"start": START, "end": END, "now": NOW}
    args.update(kw)
    return check_quality(df, kw.pop("timeframe", "5Min"), **args)


def only(report, check: str) -> dict:
    rows = report.findings.filter(pl.col("check") == check).to_dicts()
    assert len(rows) == 1, report.to_text()
    return rows[0]


def set_at(df: pl.DataFrame, sym: str, ts: datetime, **values: float) -> pl.DataFrame:
    hit = (pl.col("symbol") == sym) & (pl.col("ts") == ts)
    return df.with_columns(
        [pl.when(hit).then(pl.lit(v)).otherwise(pl.col(c)).alias(c) for c, v in values.items()]
    )


def test_clean_bars_have_no_findings_and_the_input_is_untouched() -> None:
    df = clean()
    before = df.clone()
    rep = run(df)
    assert rep.findings.is_empty() and not rep.severe
    assert rep.findings.schema == pl.Schema(FINDINGS_SCHEMA)
    assert "0 error(s), 0 warning(s), 0 info" in rep.to_text() and "no findings" in str(rep)
    assert rep.raise_if_severe() is rep
    assert df.equals(before)
    assert rep.metrics() == {
        "quality_errors": 0.0,
        "quality_warnings": 0.0,
        "quality_infos": 0.0,
        "quality_rows": float(df.height),
    }


def test_missing_session_is_an_error_and_missing_minutes_a_warning() -> None:
    df = clean()
    df = df.filter(~((pl.col("symbol") == "AAA") & (pl.col("ts").dt.date() == date(2024, 1, 4))))
    df = df.filter(~((pl.col("symbol") == "BBB") & (pl.col("ts").dt.hour() == 15)))  # 12 bars a day
    rep = run(df)
    ms = only(rep, "missing_sessions")
    assert (ms["severity"], ms["symbol"], ms["count"]) == (
        "error",
        "AAA",
        1,
    ) and "2024-01-04" in ms["examples"]
    mb = only(rep, "missing_bars")
    assert (mb["severity"], mb["symbol"], mb["count"]) == ("warning", "BBB", 12 * 9)
    assert rep.severe
    # a handful of missing minutes is only info
    sparse = clean().filter(
        ~((pl.col("symbol") == "AAA") & (pl.col("ts") == datetime(2024, 1, 3, 15, 0, tzinfo=UTC)))
    )
    assert only(run(sparse), "missing_bars")["severity"] == "info"


def test_holidays_and_early_closes_are_not_gaps() -> None:
    df = clean(start=date(2024, 7, 1), end=date(2024, 7, 8))  # July 3 early close, July 4 holiday
    assert run(
        df, start=date(2024, 7, 1), end=date(2024, 7, 8), now=NOW.replace(month=8)
    ).findings.is_empty()


def test_extended_hours_bars_are_off_calendar_info() -> None:
    df = clean()
    pre = (
        df.filter(pl.col("symbol") == "AAA").head(3).with_columns(pl.col("ts") - timedelta(hours=2))
    )
    rep = run(pl.concat([df, pre]))
    oc = only(rep, "off_calendar")
    assert (oc["severity"], oc["count"]) == ("info", 3) and not rep.severe


def test_ohlc_volume_vwap_and_duplicate_problems() -> None:
    df = clean()
    t1, t2, t3 = (datetime(2024, 1, 3, 15, m, tzinfo=UTC) for m in (0, 5, 10))
    bad = set_at(df, "AAA", t1, high=1.0)  # high below open/close
    bad = set_at(bad, "AAA", t2, volume=-5.0)
    bad = set_at(bad, "BBB", t3, vwap=1e6)
    bad = pl.concat([bad, bad.filter((pl.col("symbol") == "BBB") & (pl.col("ts") == t1))])
    rep = run(bad)
    assert (only(rep, "ohlc")["symbol"], only(rep, "ohlc")["severity"]) == ("AAA", "error")
    assert only(rep, "negative_volume")["severity"] == "error"
    vw = rep.findings.filter(pl.col("check") == "vwap_range").to_dicts()
    assert {(r["symbol"], r["severity"]) for r in vw} == {("AAA", "warning"), ("BBB", "warning")}
    assert only(rep, "duplicates")["count"] == 1
    assert rep.severe


def test_zero_volume_runs() -> None:
    df = clean()
    day = (
        (pl.col("symbol") == "BBB")
        & (pl.col("ts") >= datetime(2024, 1, 5, 15, tzinfo=UTC))
        & (pl.col("ts") < datetime(2024, 1, 5, 15, 30, tzinfo=UTC))
    )
    df = df.with_columns(volume=pl.when(day).then(0.0).otherwise("volume"))
    df = set_at(df, "AAA", datetime(2024, 1, 3, 15, tzinfo=UTC), volume=0.0)  # a single zero: fine
    z = only(run(df), "zero_volume_run")
    assert (z["symbol"], z["count"], z["severity"]) == ("BBB", 1, "warning") and "longest 6" in z[
        "detail"
    ]
    assert (
        "zero_volume_run"
        not in run(df, thresholds=QualityThresholds(zero_volume_run=7)).findings["check"]
    )


def test_price_jumps_beyond_n_sigma() -> None:
    df = clean()
    t = datetime(2024, 1, 8, 16, 0, tzinfo=UTC)
    df = df.with_columns(
        close=pl.when((pl.col("symbol") == "AAA") & (pl.col("ts") >= t))
        .then(pl.col("close") * 1.08)
        .otherwise("close"),
        high=pl.when((pl.col("symbol") == "AAA") & (pl.col("ts") >= t))
        .then(pl.col("high") * 1.08)
        .otherwise("high"),
    )
    j = only(run(df), "price_jump")
    assert (j["symbol"], j["count"], j["severity"]) == ("AAA", 1, "warning")
    assert j["examples"].startswith("2024-01-08T16:00Z (+8.")
    assert (
        run(df, thresholds=QualityThresholds(jump_sigma=1e6))
        .findings.filter(pl.col("check") == "price_jump")
        .is_empty()
    )


def test_staleness_against_the_calendar() -> None:
    df = clean()
    mid_session = datetime(
        2024, 1, 11, 18, 2, tzinfo=UTC
    )  # 13:02 ET, last complete 5Min bar 17:55Z
    ok = df.filter(pl.col("ts") < datetime(2024, 1, 11, 18, 0, tzinfo=UTC))
    assert run(ok, now=mid_session).findings.is_empty()
    behind = ok.filter(
        ~((pl.col("symbol") == "BBB") & (pl.col("ts") >= datetime(2024, 1, 11, 17, 0, tzinfo=UTC)))
    )
    s = only(run(behind, now=mid_session), "stale")
    assert (s["symbol"], s["count"], s["severity"]) == ("BBB", 12, "warning")
    strict = QualityThresholds(stale_error_bars=10)
    assert only(run(behind, now=mid_session, thresholds=strict), "stale")["severity"] == "error"
    one_behind = ok.filter(
        ~((pl.col("symbol") == "BBB") & (pl.col("ts") == datetime(2024, 1, 11, 17, 55, tzinfo=UTC)))
    )
    assert only(run(one_behind, now=mid_session), "stale")["severity"] == "info"


def test_missing_symbol_and_crypto_staleness() -> None:
    lo = datetime(2024, 1, 2, tzinfo=UTC)
    ts = pl.datetime_range(
        lo, lo + timedelta(hours=10), "5m", closed="left", time_unit="us", eager=True
    )
    btc = pl.DataFrame(
        {
            "symbol": "BTC/USD",
            "ts": ts,
            "open": 1.0,
            "high": 1.0,
            "low": 1.0,
            "close": 1.0,
            "volume": 1.0,
        }
    )
    rep = check_quality(btc, "5Min", symbols=["BTC/USD", "ZZZ"], now=lo + timedelta(hours=11))
    assert only(rep, "no_data")["symbol"] == "ZZZ" and rep.severe
    st = only(rep, "stale")
    assert st["symbol"] == "BTC/USD" and st["count"] == 12  # 24/7: 10:00..10:55 missed
    assert "missing_sessions" not in rep.findings["check"]


def test_text_figure_and_raise_for_a_severe_report() -> None:
    df = clean().filter(
        ~((pl.col("symbol") == "AAA") & (pl.col("ts").dt.date() == date(2024, 1, 4)))
    )
    rep = run(df, symbols=["AAA", "BBB", "CCC"])
    text = rep.to_text()
    assert text.splitlines()[0].startswith("Data quality: 5Min, 3 symbol(s)")
    assert "ERROR   missing_sessions" in text and "ERROR   no_data" in text
    with pytest.raises(DataQualityError) as ei:
        rep.raise_if_severe()
    assert "missing_sessions" in str(ei.value) and "Fix:" in str(ei.value)
    fig = rep.figure()
    assert {t.name for t in fig.data} == {"missing_sessions (error)", "no_data (error)"}
    assert list(fig.data[0].x) == ["AAA", "BBB", "CCC"]
    assert rep.summary()["severity"].to_list() == ["error", "error"]


def test_check_store_after_an_ingest(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(clean(), "5Min")
    rep = check_store(store, ["AAA", "BBB", "NEW"], "5Min", START, END, now=NOW)
    assert only(rep, "no_data")["symbol"] == "NEW"
    assert set(rep.findings["check"]) == {"no_data"}


def test_a_simulator_ingest_passes_the_report(tmp_path: Path) -> None:
    from workbench.data.ingest import ingest
    from workbench.data.sources.synthetic import SyntheticSource

    store = BarStore(tmp_path)
    syms = ["SYN000", "SYN001"]
    ingest(SyntheticSource(seed=3), store, syms, "5Min", START, END, progress=False)
    rep = check_store(store, syms, "5Min", START, END, now=NOW)
    assert not rep.severe, rep.to_text()
    assert rep.rows == 2 * 78 * 9
