"""Universe rotation: liquidity and gap ranking, no look-ahead, hysteresis, retention, history."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path

import jupytext
import polars as pl
import pytest
from typer.testing import CliRunner

from workbench.data import calendar as cal
from workbench.data.store import BarStore
from workbench.errors import ConfigError, ParameterError, PipelineError, StoreError
from workbench.pipeline.spec import load_spec, parse_overrides, validate_spec
from workbench.portfolio.universe import (
    UniverseConfig,
    UniverseStore,
    resolve_symbols,
    select_universe,
)
from workbench.portfolio.universe_cli import universe_app

S = cal.sessions("2024-01-02", "2024-01-23")["session"].to_list()  # 15 sessions (Jan 15 closed)
UNIT = 100_000.0  # shares; at close 10 one unit is $1,000,000 a session
BASE = {"A": 6.0, "B": 5.0, "C": 4.0, "D": 3.0}
SYMS = ["A", "B", "C", "D"]


def daily_bars(units: Mapping[str, float], days: list[date], skip: frozenset[int] = frozenset()):
    ts = cal.bar_starts("1Day", days[0], days[-1])
    rows = [
        {
            "symbol": sym,
            "ts": t,
            "open": 10.0,
            "high": 10.0,
            "low": 10.0,
            "close": 10.0,
            "volume": u * UNIT,
            "vwap": 10.0,
            "trade_count": 1,
        }
        for sym, u in units.items()
        for i, t in enumerate(ts)
        if i not in skip
    ]
    return pl.DataFrame(rows)


def set_day(store: BarStore, day: date, units: Mapping[str, float]) -> None:
    store.write(daily_bars(units, [day]), "1Day")


@pytest.fixture
def store(tmp_path: Path) -> BarStore:
    """A, B, C, D on every session with $6M, $5M, $4M, $3M a day."""
    st = BarStore(tmp_path / "bars")
    st.write(daily_bars(BASE, S), "1Day")
    return st


@pytest.fixture
def us(tmp_path: Path):
    with UniverseStore(root=tmp_path) as u:
        yield u


def one_day(size: int = 2, **kw) -> UniverseConfig:
    return UniverseConfig(size=size, lookback_days=1, **kw)


# ---------------------------------------------------------------------- selection


def test_ranking_and_reasons(store: BarStore) -> None:
    store.write(daily_bars({"E": 10.0}, S, skip=frozenset({3, 4, 5})), "1Day")  # liquid, gappy
    store.write(daily_bars({"G": 0.5}, S), "1Day")  # $500,000 a day
    cfg = UniverseConfig(size=2, lookback_days=15, min_dollar_volume=3.5e6, max_missing_share=0.1)
    sel = select_universe(store, [*SYMS, "E", "F", "G", "A"], "1Day", S[-1], cfg)
    got = {r["symbol"]: r for r in sel.iter_rows(named=True)}
    assert sel["symbol"].to_list() == ["A", "B", "C", "D", "E", "F", "G"]  # ranked, then by name
    assert [got[s]["rank"] for s in "ABC"] == [1, 2, 3]
    assert [got[s]["selected"] for s in "ABC"] == [True, True, False]
    assert got["A"]["avg_dollar_volume"] == pytest.approx(6e6)
    assert got["A"]["missing_share"] == 0.0 and got["A"]["expected_bars"] == 15
    assert got["D"]["reason"] == "illiquid: $3,000,000 < $3,500,000"
    assert got["E"]["reason"] == "gaps: 20% > 10%"  # 3 of 15 missing; its $10M does not help
    assert got["E"]["avg_dollar_volume"] == pytest.approx(10e6) and got["E"]["sessions"] == 12
    assert got["F"]["reason"] == "no data" and got["F"]["bars"] == 0
    assert got["G"]["reason"] == "illiquid: $500,000 < $3,500,000"
    for s in "DEFG":
        assert got[s]["rank"] is None and not got[s]["eligible"] and not got[s]["selected"]
    both = UniverseConfig(lookback_days=15, min_dollar_volume=2e7, max_missing_share=0.05)
    e = select_universe(store, ["E"], "1Day", S[-1], both).row(0, named=True)
    assert e["reason"] == "gaps: 20% > 5%; illiquid: $10,000,000 < $20,000,000"


def test_intraday_gaps_count_calendar_bars_and_ignore_extended_hours(tmp_path: Path) -> None:
    st = BarStore(tmp_path / "bars")
    days = S[:2]
    stamps = cal.bar_starts("1Hour", days[0], days[-1]).to_list()  # 7 regular bars a session
    assert len(stamps) == 14
    pre = [t - timedelta(hours=5) for t in stamps[:1]]  # a pre-market bar, off the calendar
    kept = [t for i, t in enumerate(stamps) if i not in (2, 9)]
    bars = pl.DataFrame(
        {
            "symbol": "X",
            "ts": pre + kept,
            "open": 10.0,
            "high": 10.0,
            "low": 10.0,
            "close": 10.0,
            "volume": 1000.0,
            "vwap": 10.0,
            "trade_count": 1,
        }
    )
    st.write(bars, "1Hour")
    row = select_universe(st, ["X"], "1Hour", days[-1], UniverseConfig(lookback_days=2)).row(
        0, named=True
    )
    assert row["expected_bars"] == 14 and row["bars"] == 12
    assert row["missing_share"] == pytest.approx(2 / 14)
    assert row["reason"] == "gaps: 14.3% > 5%"
    assert row["avg_dollar_volume"] == pytest.approx(6 * 10_000)  # per session, pre-market ignored


def test_no_look_ahead(store: BarStore) -> None:
    cfg = UniverseConfig(size=2, lookback_days=5)
    as_of = S[9]
    before = select_universe(store, SYMS, "1Day", as_of, cfg)
    for day in S[10:]:
        set_day(store, day, {"D": 100.0})  # D becomes by far the most liquid, after as_of
    assert select_universe(store, SYMS, "1Day", as_of, cfg).equals(before)
    assert select_universe(store, SYMS, "1Day", S[10], cfg)["symbol"][0] == "D"  # seen once due
    set_day(store, as_of, {"C": 14.0})  # the as_of session itself is part of the window
    c = select_universe(store, ["C"], "1Day", as_of, cfg).row(0, named=True)
    assert c["avg_dollar_volume"] == pytest.approx((4 * 4 + 14) / 5 * 1e6)
    saturday = select_universe(store, SYMS, "1Day", date(2024, 1, 20), cfg)
    assert saturday.equals(select_universe(store, SYMS, "1Day", date(2024, 1, 19), cfg))


# ---------------------------------------------------------------------- rotation rules


def test_buffer_keeps_an_incumbent_at_size_plus_one_but_not_a_newcomer(
    store: BarStore, us: UniverseStore
) -> None:
    cfg = one_day(size=2, buffer=1)
    assert us.rotate("u", store, SYMS, "1Day", S[0], cfg).members == ("A", "B")
    set_day(store, S[1], {"C": 7.0})  # ranks: C, A, B, D
    r1 = us.rotate("u", store, SYMS, "1Day", S[1], cfg)
    assert r1.members == ("A", "B") and r1.added == {} and r1.removed == {}
    notes = dict(zip(r1.selection["symbol"], r1.selection["note"], strict=True))
    assert notes["B"] == "rank 3 <= size+buffer 3" and notes["C"] is None
    fresh = us.rotate("fresh", store, SYMS, "1Day", S[1], cfg)
    assert fresh.members == ("A", "C")  # B at rank 3 = size+1 does not enter a fresh universe
    set_day(store, S[2], {"C": 7.0, "D": 5.5})  # ranks: C, A, D, B
    r2 = us.rotate("u", store, SYMS, "1Day", S[2], cfg)
    assert r2.removed == {"B": "rank 4 > size+buffer 3"}
    assert r2.added == {"C": "rank 1 <= size 2"}  # D at rank 3 is not good enough to enter
    assert r2.members == ("A", "C") and r2.turnover == 0.5


def test_min_retention_holds_a_member_until_due_unless_it_fails_hard(
    store: BarStore, us: UniverseStore
) -> None:
    cfg = one_day(size=2, min_retention_days=3, min_dollar_volume=1e6)
    us.rotate("u", store, SYMS, "1Day", S[0], cfg)
    for day in S[1:4]:
        set_day(store, day, {"C": 5.5})  # ranks: A, C, B
    r1 = us.rotate("u", store, SYMS, "1Day", S[1], cfg)
    r2 = us.rotate("u", store, SYMS, "1Day", S[2], cfg)
    assert r1.members == r2.members == ("A", "B") and not r2.added
    note = r2.selection.filter(pl.col("symbol") == "B")["note"].item()
    assert note == "rank 3 > size+buffer 2, retained: member 2 < 3 sessions"
    r3 = us.rotate("u", store, SYMS, "1Day", S[3], cfg)  # B has been in 3 sessions: due
    assert r3.removed == {"B": "rank 3 > size+buffer 2"} and r3.added == {"C": "rank 2 <= size 2"}

    hard = one_day(size=2, min_retention_days=10, min_dollar_volume=1e6)
    us.rotate("hard", store, SYMS, "1Day", S[4], hard)
    set_day(store, S[5], {"B": 0.5})  # $500,000 < $1,000,000: fails the floor
    r = us.rotate("hard", store, SYMS, "1Day", S[5], hard)
    assert r.removed == {"B": "illiquid: $500,000 < $1,000,000"} and r.members == ("A", "C")
    gone = us.rotate("hard", store, ["A", "B"], "1Day", S[6], hard)  # C dropped from candidates
    assert gone.removed == {"C": "no longer a candidate"} and gone.members == ("A", "B")


def test_rotate_is_idempotent_and_refuses_the_past(store: BarStore, us: UniverseStore) -> None:
    cfg = one_day()
    us.rotate("u", store, SYMS, "1Day", S[0], cfg)
    set_day(store, S[2], {"C": 5.5})
    first = us.rotate("u", store, SYMS, "1Day", S[2], cfg)
    hist, metrics = us.history("u"), us.metrics("u")
    set_day(store, S[2], {"D": 50.0})  # the data changes; the recorded rotation stands
    again = us.rotate("u", store, list(reversed(SYMS)), "1Day", S[2].isoformat(), cfg)
    assert again == first and again.selection.equals(first.selection)
    assert us.history("u").equals(hist) and us.metrics("u") == metrics
    with pytest.raises(StoreError, match="already rotated as of 2024-01-04 with other inputs"):
        us.rotate("u", store, SYMS, "1Day", S[2], one_day(size=3))
    with pytest.raises(ParameterError) as err:
        us.rotate("u", store, SYMS, "1Day", S[1], cfg)
    assert "2024-01-04" in str(err.value) and "Got 2024-01-03" in str(err.value)
    with pytest.raises(ParameterError, match="'candidates' parameter .* at least one symbol"):
        us.rotate("u", store, [], "1Day", S[3], cfg)
    assert us.history("u").equals(hist) and us.metrics("u")["rotation_count"] == 2


# ---------------------------------------------------------------------- history and measures


@pytest.fixture
def sequence(store: BarStore, us: UniverseStore) -> UniverseStore:
    """Jan 2: A, B in; Jan 4: C replaces B; Jan 8: B replaces C (size 2, one session ranked)."""
    set_day(store, S[2], {"C": 5.5})
    for day in (S[0], S[2], S[4]):
        us.rotate("u", store, SYMS, "1Day", day, one_day())
    return us


def test_members_as_of_past_dates_and_history(sequence: UniverseStore) -> None:
    us = sequence
    assert us.members("u", S[0] - timedelta(days=1)) == []
    assert us.members("u", S[0]) == us.members("u", S[1]) == ["A", "B"]
    assert us.members("u", "2024-01-04") == us.members("u", S[3]) == ["A", "C"]
    assert us.members("u", S[4]) == us.members("u") == ["A", "B"]
    assert us.members("nope") == [] and us.names() == ["u"]
    h = us.history("u")
    assert h.columns == ["as_of", "symbol", "action", "reason"]
    assert h.select("as_of", "symbol", "action").rows() == [
        (S[0], "A", "added"),
        (S[0], "B", "added"),
        (S[2], "C", "added"),
        (S[2], "B", "removed"),
        (S[4], "B", "added"),
        (S[4], "C", "removed"),
    ]
    assert h.filter(pl.col("action") == "removed")["reason"].to_list() == [
        "rank 3 > size+buffer 2",
        "rank 3 > size+buffer 2",
    ]


def test_stability_and_metrics_by_hand(sequence: UniverseStore) -> None:
    st = sequence.stability("u")
    # observed sessions Jan 2, 3, 4, 5, 8; B in Jan 2-3 and Jan 8, C in Jan 4-5
    assert st.rows() == [
        ("A", 5, 5, 1.0, 1, True, 1.0),
        ("C", 2, 5, 0.4, 1, False, 0.4),
        ("B", 3, 5, 0.6, 2, True, 0.3),
    ]
    m = sequence.metrics("u")
    assert m["rotation_count"] == 3 and m["current_size"] == 2
    assert m["avg_turnover"] == pytest.approx(0.5)  # (1 + 1) / 4 on Jan 4 and on Jan 8
    assert m["avg_tenure_days"] == pytest.approx((6 + 2 + 4 + 0) / 4)  # A, B, C, B again
    empty = sequence.metrics("nope")
    assert empty["rotation_count"] == 0 and math.isnan(empty["avg_turnover"])
    assert sequence.stability("nope").is_empty()


def test_persists_across_instances_in_wal_mode(
    sequence: UniverseStore, store: BarStore, tmp_path: Path
) -> None:
    db = tmp_path / "runs" / "universe.db"  # the relative default resolved against root
    assert db.is_file()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with UniverseStore(f"sqlite:///{db}") as other:
        assert other.members("u") == ["A", "B"]
        assert other.history("u").equals(sequence.history("u"))
        assert other.stability("u").equals(sequence.stability("u"))
        assert other.rotate("u", store, SYMS, "1Day", S[4], one_day()).members == ("A", "B")
        r = other.rotate("u", store, SYMS, "1Day", S[5], one_day())
        assert r.added == {} and r.removed == {}
    assert sequence.metrics("u")["rotation_count"] == 4


# ---------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("size", 0),
        ("size", 2.0),
        ("size", True),
        ("lookback_days", 0),
        ("min_dollar_volume", -1.0),
        ("min_dollar_volume", math.inf),
        ("max_missing_share", 1.5),
        ("max_missing_share", -0.1),
        ("max_missing_share", "5%"),
        ("min_retention_days", -1),
        ("buffer", -2),
    ],
)
def test_bad_config_values_name_the_field_and_value(name: str, value: object) -> None:
    with pytest.raises(ParameterError) as err:
        UniverseConfig(**{name: value})
    msg = str(err.value)
    assert f"The {name!r} parameter of UniverseConfig must be" in msg
    assert f"Got {value!r} instead." in msg


def test_config_is_frozen_keyword_only_and_hashed() -> None:
    cfg = UniverseConfig(size=3, min_dollar_volume=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.size = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        UniverseConfig(3)  # type: ignore[misc]
    assert cfg.config_hash == UniverseConfig(size=3, min_dollar_volume=1.0).config_hash
    assert cfg.config_hash != UniverseConfig(size=4).config_hash and len(cfg.config_hash) == 64
    assert UniverseConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ParameterError, match="no field 'sise'.*Did you mean 'size'"):
        UniverseConfig.from_dict({"sise": 3})


# ---------------------------------------------------------------------- symbols from a universe


def test_resolve_symbols(sequence: UniverseStore, tmp_path: Path) -> None:
    assert resolve_symbols("universe:u", root=tmp_path) == ["A", "B"]
    assert resolve_symbols(" AAPL, MSFT,AAPL", root=tmp_path) == ["AAPL", "MSFT"]
    assert resolve_symbols(["X", "Y"], root=tmp_path) == ["X", "Y"]
    with pytest.raises(StoreError, match=r"universe 'uu' has no members.*Did you mean 'u'\?"):
        resolve_symbols("universe:uu", root=tmp_path)
    with pytest.raises(ConfigError, match="names no universe"):
        resolve_symbols("universe:", root=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(StoreError, match="no universe database at .*wb universe rotate --name u"):
        resolve_symbols("universe:u", root=elsewhere)
    assert not elsewhere.exists()  # resolving never creates a database


NOTEBOOK = """# %% tags=["parameters"]
symbols: list[str] = ["X"]  # symbols to trade
output_path: str = ""  # set by the runner
parent_run_id: str = ""  # set by the runner
pipeline: str = ""  # set by the runner
"""


def test_pipeline_parameter_from_a_universe(sequence: UniverseStore, tmp_path: Path) -> None:
    nb = jupytext.reads(NOTEBOOK, fmt="py:percent")
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    jupytext.write(nb, tmp_path / "step.ipynb")
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\nparameters: {symbols: 'universe:u'}\n"
        "steps:\n  - {name: a, notebook: step.ipynb, parameters: {symbols: '${symbols}'}}\n"
    )
    spec = load_spec(path)
    assert validate_spec(spec, {}, tmp_path)["symbols"] == ["A", "B"]
    direct = parse_overrides(["symbols=[Q, R]"], spec)
    assert validate_spec(spec, direct, tmp_path)["symbols"] == ["Q", "R"]
    with pytest.raises(PipelineError) as err:
        validate_spec(spec, parse_overrides(["symbols=universe:empty"], spec), tmp_path)
    msg = str(err.value)
    assert "shared parameter 'symbols' = 'universe:empty'" in msg
    assert "universe 'empty' has no members" in msg and "nothing was run" in msg


# ---------------------------------------------------------------------- CLI


def test_cli_rotate_show_history(isolated: Path, store: BarStore, tmp_path: Path) -> None:
    runner = CliRunner()
    url = f"sqlite:///{tmp_path / 'cli' / 'u.db'}"
    common = ["--name", "liq", "--url", url]
    args = ["--symbols", "A,B,C,D,F", "--timeframe", "1Day", "--store", str(store.root)]
    res = runner.invoke(
        universe_app,
        [
            "rotate",
            *common,
            *args,
            "--as-of",
            S[0].isoformat(),
            "--size",
            "2",
            "--lookback-days",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "members (2): A, B; added 2, removed 0" in res.output and "no data" in res.output
    with UniverseStore(url) as us:
        assert us.members("liq") == ["A", "B"]
    show = runner.invoke(universe_app, ["show", *common])
    assert show.exit_code == 0, show.output
    assert "2 member(s); rotations 1" in show.output and "2024-01-02" in show.output
    before = runner.invoke(universe_app, ["show", *common, "--as-of", "2024-01-01"])
    assert before.exit_code == 1 and "no members as of 2024-01-01" in before.output
    hist = runner.invoke(universe_app, ["history", *common])
    assert hist.exit_code == 0 and hist.output.count("added") == 2
    past = runner.invoke(
        universe_app, ["rotate", *common, *args, "--as-of", "2023-12-29", "--size", "2"]
    )
    assert past.exit_code == 2 and "error:" in past.output and "2024-01-02" in past.output
    bad = runner.invoke(
        universe_app, ["rotate", *common, *args, "--as-of", S[1].isoformat(), "--size", "0"]
    )
    assert bad.exit_code == 2 and "'size' parameter of UniverseConfig" in bad.output
    unknown = runner.invoke(universe_app, ["history", "--name", "nope", "--url", url])
    assert unknown.exit_code == 1 and "no recorded rotation" in unknown.output
