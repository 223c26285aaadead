"""The bar contract knows time: bars sit on their timeframe's grid and inside the calendar's
sessions (extended hours only when the source says so)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from workbench.data.calendar import check_bar_times
from workbench.data.ingest import ingest
from workbench.data.sources.synthetic import SyntheticSource
from workbench.errors import SchemaError

from .conftest import make_bars

OPEN = datetime(2024, 1, 3, 14, 30, tzinfo=UTC)  # Wednesday 09:30 New York


def one(ts: datetime, symbol: str = "AAA") -> pl.DataFrame:
    return make_bars([symbol], ts, 1)


def test_synthetic_bars_of_every_timeframe_pass() -> None:
    src = SyntheticSource(seed=2)
    for tf in ("1Min", "5Min", "15Min", "1Hour", "1Day"):
        bars = src.fetch(
            ["SYN000"], tf, datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 7, 9, tzinfo=UTC)
        )
        assert bars.height
        check_bar_times(bars, tf)


@pytest.mark.parametrize(
    ("tf", "ts", "rule"),
    [
        ("5Min", OPEN + timedelta(minutes=1), "ts on the 5Min grid"),  # 1Min bars sold as 5Min
        ("5Min", OPEN + timedelta(seconds=17), "ts on the 5Min grid"),
        ("1Hour", OPEN, "ts on the 1Hour grid"),
        ("1Day", datetime(2024, 1, 3, 15, tzinfo=UTC), "ts on the 1Day grid"),
        (
            "5Min",
            datetime(2024, 1, 7, 8, tzinfo=UTC),
            "bar inside a XNYS regular session",
        ),  # Sun 03:00
        ("5Min", OPEN - timedelta(hours=1), "bar inside a XNYS regular session"),  # pre-market
        (
            "5Min",
            OPEN + timedelta(hours=6, minutes=30),
            "bar inside a XNYS regular session",
        ),  # 16:00
        (
            "1Day",
            datetime(2024, 1, 15, 5, tzinfo=UTC),
            "daily bar on a XNYS session date",
        ),  # MLK day
        (
            "1Day",
            datetime(2024, 1, 6, 5, tzinfo=UTC),
            "daily bar on a XNYS session date",
        ),  # Saturday
    ],
)
def test_bars_breaking_time_are_refused_naming_rows_and_rule(
    tf: str, ts: datetime, rule: str
) -> None:
    bars = one(ts)
    with pytest.raises(SchemaError) as err:
        check_bar_times(bars, tf)
    msg = str(err.value)
    assert err.value.rule.startswith(rule) and rule in msg
    assert "1 row(s)" in msg and "row=0" in msg and "Fix:" in msg
    assert str(ts.replace(tzinfo=None))[:16] in msg.replace("T", " ")


@pytest.mark.parametrize(
    ("tf", "ts"),
    [
        ("5Min", OPEN),
        ("5Min", OPEN + timedelta(hours=6, minutes=25)),  # 15:55, the last bar
        ("1Hour", OPEN - timedelta(minutes=30)),  # 09:00 ET covers 09:30-10:00
        ("1Day", datetime(2024, 1, 3, 5, tzinfo=UTC)),  # midnight New York (EST)
        ("1Day", datetime(2024, 7, 3, 4, tzinfo=UTC)),  # midnight New York (EDT)
    ],
)
def test_bars_on_the_grid_inside_sessions_pass(tf: str, ts: datetime) -> None:
    check_bar_times(one(ts), tf)


def test_extended_hours_only_when_the_source_says_so() -> None:
    pre = one(OPEN - timedelta(hours=5))  # 04:30 ET
    with pytest.raises(SchemaError, match="regular session"):
        check_bar_times(pre, "5Min")
    check_bar_times(pre, "5Min", extended_hours=True)
    sunday = one(datetime(2024, 1, 7, 8, tzinfo=UTC))
    with pytest.raises(SchemaError, match="04:00-20:00 trading day"):
        check_bar_times(sunday, "5Min", extended_hours=True)  # still no session on a Sunday


def test_crypto_trades_around_the_clock_but_keeps_the_grid() -> None:
    check_bar_times(one(datetime(2024, 1, 7, 8, tzinfo=UTC), "BTC/USD"), "5Min")
    with pytest.raises(SchemaError, match="5Min grid"):
        check_bar_times(one(datetime(2024, 1, 7, 8, 1, tzinfo=UTC), "BTC/USD"), "5Min")


def test_store_refuses_bars_off_the_timeframe_grid(tmp_path) -> None:
    from workbench.data.store import BarStore

    store = BarStore(tmp_path)
    one_min = make_bars(["AAA"], OPEN, 10, step_min=1)
    with pytest.raises(SchemaError, match=r"violate 'ts on the 5Min grid.*row=1"):
        store.write(one_min, "5Min")
    assert not list(tmp_path.rglob("*.parquet"))
    store.write(one_min, "1Min")
    assert store.read(["AAA"], "1Min").height == 10


class _Shifted(SyntheticSource):
    """A source with a clock 17 s off (the finding)."""

    def fetch(self, symbols, timeframe, start, end):
        bars = super().fetch(symbols, timeframe, start, end)
        return bars.with_columns(pl.col("ts") + pl.duration(seconds=17)).filter(pl.col("ts") < end)


def test_ingest_refuses_a_source_off_the_grid_before_writing(tmp_path) -> None:
    from workbench.data.store import BarStore

    store = BarStore(tmp_path / "s")
    with pytest.raises(SchemaError, match=r"5Min grid.*ts=2024-01-02 14:30:17"):
        ingest(
            _Shifted(seed=1),
            store,
            ["SYN000"],
            "5Min",
            date(2024, 1, 2),
            date(2024, 1, 3),
            progress=False,
        )
    assert not list(store.root.rglob("*.parquet"))
