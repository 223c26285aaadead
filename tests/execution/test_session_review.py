"""Every session is reviewed: a live session on the simulated broker and a paper session against
the local Alpaca stub each produce a divergence run in MLflow linked to the traded model version
(a live one on the bars it recorded); a session whose bars cannot be recovered gets a report that
says why. Shadow sessions with the challenger on its own paper account: each arm's orders reach
its own account, the ledgers stay apart, missing or shared keys and a shared account are refused,
and no key reaches an output, an MLflow param or a tag."""

from __future__ import annotations

import json
import os
import secrets
import types
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import mlflow
import polars as pl
import pytest
from typer.testing import CliRunner

from tests.alpaca import trading_stub
from tests.alpaca.trading_stub import KEY_ID, SECRET, TradingStub
from workbench import tracking
from workbench.config import load_config
from workbench.data.sources.synthetic import SyntheticSource
from workbench.data.store import BarStore
from workbench.errors import ConfigError, CredentialsError
from workbench.execution.bars import ReplayBars
from workbench.execution.divergence import DIVERGENCE_TAG
from workbench.execution.ledger import OrderLedger
from workbench.features.sets import build_features
from workbench.models.registry import CHALLENGER, CHAMPION, log_lightgbm, set_alias

REPO = Path(__file__).resolve().parents[2]
SYMBOLS = ["SYN000", "SYN001"]
STRATEGY = "intraday_reversal"
DAY = "2024-03-01"
DAY_START = datetime(2024, 3, 1, tzinfo=UTC)
# the challenger's own paper account: made up per run, never committed, never in an output
KEY2, SECRET2 = "PK" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)


def _register(cfg, bars: pl.DataFrame, *, trees: int, alias: str) -> str:
    feats = build_features(bars, STRATEGY, cfg)
    cols = [c for c in feats.columns if c not in ("symbol", "ts")]
    nxt = bars.select(
        "symbol", "ts",
        (pl.col("close").shift(-1).over("symbol") / pl.col("close") - 1).alias("label"),
    )  # fmt: skip
    table = feats.join(nxt, on=["symbol", "ts"]).drop_nulls().sort("ts", "symbol")
    train = table.filter(pl.col("ts") < datetime(2024, 2, 20, tzinfo=UTC))
    model = lgb.LGBMRegressor(n_estimators=trees, num_leaves=4, min_child_samples=50, verbose=-1)
    model.fit(train.select(cols).to_pandas(), train["label"].to_numpy())
    with mlflow.start_run():
        ref = log_lightgbm(
            model, train.select(cols).to_pandas(), registered_name=STRATEGY,
            tags={"split_ts": "2024-02-20T00:00:00+00:00"},
        )  # fmt: skip
    set_alias(STRATEGY, alias, ref.version)
    return str(ref.version)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A tracking store with a champion and a challenger, a bar store with the session's day
    and one without it (what a live session has before the next ingest)."""
    tmp = tmp_path_factory.mktemp("review")
    mp = pytest.MonkeyPatch()
    for k in list(os.environ):
        if k.startswith(("WB_", "APCA_")) or k == "MLFLOW_TRACKING_URI":
            mp.delenv(k)
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "WB_MLFLOW__ARTIFACT_ROOT": str(tmp / "mlartifacts"),
        "WB_STORE__ROOT": str(tmp / "bars"),
        "WB_EXECUTION__LEDGER_URL": f"sqlite:///{tmp / 'ledger.db'}",
        "WB_EXECUTION__SETTLE_SECONDS": "2",
        "WB_RISK__STATE_URL": f"sqlite:///{tmp / 'risk.db'}",
        "WB_ALERTS__HISTORY_PATH": str(tmp / "alerts.jsonl"),
        "WB_BACKTEST__COSTS__SLIPPAGE_PATH": str(tmp / "slippage"),
        # registered without validation: fixed thresholds (this module is about the review)
        "WB_STRATEGIES__INTRADAY_REVERSAL__DECISION__COST_MULTIPLES": "[]",
    }
    for k, v in env.items():
        mp.setenv(k, v)
    before = mlflow.get_tracking_uri()
    cfg = load_config(REPO)
    tracking.setup(cfg)
    bars = SyntheticSource(seed=7, alpha=0.2).fetch(
        SYMBOLS, "5Min", datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC)
    )
    BarStore(tmp / "bars").write(bars, "5Min")
    BarStore(tmp / "before").write(bars.filter(pl.col("ts") < DAY_START), "5Min")
    versions = {
        CHAMPION: _register(cfg, bars, trees=10, alias=CHAMPION),
        CHALLENGER: _register(cfg, bars, trees=25, alias=CHALLENGER),
    }
    yield {"cfg": cfg, "tmp": tmp, "bars": bars, "versions": versions}
    mp.undo()
    mlflow.set_tracking_uri(before)


def _divergence_runs(version: str) -> list:
    client = mlflow.MlflowClient()
    exps = [e.experiment_id for e in mlflow.search_experiments()]
    return client.search_runs(
        exps, f"tags.report = 'divergence' and tags.model_version = '{version}'",
        order_by=["attributes.start_time DESC"],
    )  # fmt: skip


def _json_line(output: str) -> dict:
    return json.loads([ln for ln in output.splitlines() if ln.startswith("{")][-1])


def test_a_live_session_is_reviewed_on_the_bars_it_recorded(project, monkeypatch) -> None:
    """`wb session run --mode live` on the sim broker: the live bars (here a stand-in for the
    trade stream) exist in no store; the session records them and its divergence report
    re-runs the backtest on them, logged against the champion version."""
    from workbench.cli import app

    tmp, bars = project["tmp"], project["bars"]
    day = bars.filter(pl.col("ts") >= DAY_START)

    def live(cfg, symbols, timeframe, clock, open_ts, close_ts):
        return ReplayBars(day.filter(pl.col("symbol").is_in(symbols))).stream()

    monkeypatch.setattr("workbench.stages.session._live_source", live)
    ledger = tmp / "live-ledger.db"
    args = ["session", "run", "--strategy", STRATEGY, "--broker", "sim", "--mode", "live",
            "--date", DAY, "--store", str(tmp / "before"), "--ledger", f"sqlite:///{ledger}",
            "--symbols", ",".join(SYMBOLS), "--allow", "ungated", "--json"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    summary = _json_line(out.output)
    assert summary["status"] == "done" and summary["fills"] > 0
    recorded = sorted((tmp / "live-ledger-bars").rglob("bars-*.parquet"))
    assert len(recorded) == day["ts"].n_unique()  # every bar the session saw, once
    (run,) = [r for r in _divergence_runs(project["versions"][CHAMPION])
              if r.data.tags["session_id"].endswith(":live")]  # fmt: skip
    tags, m = run.data.tags, run.data.metrics
    assert (tags["model_name"], tags["model_alias"], tags["divergence_status"]) == (
        STRATEGY, CHAMPION, "ok",
    )  # fmt: skip
    assert tags["bars_source"].startswith("recorded by the session")
    assert tags["session_date"] == DAY
    assert m["pnl_session"] == pytest.approx(summary["net_pnl"], abs=0.01)
    assert m["trades_backtest"] > 0 and m["trades_session"] > 0
    # the simulated venue fills like the backtest (next open, the same costs): no divergence
    assert m["pnl_diff"] == pytest.approx(0.0, abs=1e-6)
    assert m["residual"] == pytest.approx(0.0, abs=1e-6)
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "divergence")}
    assert "divergence/divergence.html" in arts
    mv = mlflow.MlflowClient().get_model_version(STRATEGY, project["versions"][CHAMPION])
    assert mv.tags[f"{DIVERGENCE_TAG}.run_id"] == run.info.run_id
    assert mv.tags[f"{DIVERGENCE_TAG}.status"] == "ok"
    assert float(mv.tags[f"{DIVERGENCE_TAG}.pnl_session"]) == pytest.approx(
        m["pnl_session"], rel=1e-5
    )


def test_a_session_whose_bars_are_gone_gets_a_report_saying_why(project) -> None:
    from workbench.stages.session import _live_session_bars, review_session, run_trade_session

    cfg, tmp = project["cfg"], project["tmp"]
    res = run_trade_session(
        cfg, store_root=str(tmp / "bars"), model_name=STRATEGY, strategy=STRATEGY,
        timeframe="5Min", symbols=SYMBOLS, session_date=DAY,
        ledger_url=f"sqlite:///{tmp / 'gone-ledger.db'}", echo=lambda _: None,
        allow_model=("ungated",),
    )  # fmt: skip
    assert res.bars_source == "replayed from the store" and not res.bars_missing
    history = res.bars.filter(pl.col("ts") < res.session_start)
    bars, source, why = _live_session_bars(
        BarStore(tmp / "before"), history, tmp / "no-recording", SYMBOLS, "5Min",
        res.session_start, res.session_id,
    )  # fmt: skip
    assert source == "" and bars.height == history.height
    assert "recorded no bars" in why and "cannot be re-run" in why and str(tmp / "before") in why
    gone = replace(res, bars=bars, bars_missing=why, bars_source="")
    printed: list[str] = []
    with mlflow.start_run(run_name="trade_session"):
        report, curve = review_session(cfg, gone, strategy=STRATEGY, echo=printed.append)
    assert not report.available and report.reason == why and curve is None
    assert printed == [f"divergence: not computed: {why}"]
    run = _divergence_runs(project["versions"][CHAMPION])[0]
    assert run.data.tags["divergence_status"] == "unavailable"
    assert run.data.tags["divergence_reason"] == why
    own = {k: v for k, v in run.data.metrics.items() if not k.startswith("divergence_")}
    assert own == {"pnl_session": pytest.approx(res.result.net_pnl)}  # nothing else is known
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/divergence/unavailable.txt")
    assert text == why
    mv = mlflow.MlflowClient().get_model_version(STRATEGY, project["versions"][CHAMPION])
    assert mv.tags[f"{DIVERGENCE_TAG}.status"] == "unavailable"
    assert mv.tags[f"{DIVERGENCE_TAG}.reason"] == why
    assert mv.tags[f"{DIVERGENCE_TAG}.run_id"] == run.info.run_id
    # an earlier session's comparison is not left beside this session's run id
    assert f"{DIVERGENCE_TAG}.pnl_diff" not in mv.tags


# ---------------------------------------------------------------------- Alpaca paper


def _own_account(key_id: str, secret: str, account_id: str) -> type[TradingStub]:
    """A TradingStub class for another account: its own keys and account id (the stub module
    reads them as globals; these methods see their own)."""
    g = {**vars(trading_stub), "KEY_ID": key_id, "SECRET": secret, "ACCOUNT_ID": account_id}

    def rebind(fn):
        return types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)

    names = ("_handle", "_stream", "_account_json")
    return type(
        "OwnAccountStub", (TradingStub,), {n: rebind(getattr(TradingStub, n)) for n in names}
    )


@pytest.fixture
def accounts(project, monkeypatch) -> Iterator[tuple[TradingStub, TradingStub]]:
    """Two paper accounts on two local servers: the champion's (APCA_API_*) and the
    challenger's (APCA_CHALLENGER_API_*)."""
    champion = TradingStub(max_streams=None).start()
    challenger = _own_account(KEY2, SECRET2, "0c6b7d2e-5a1f-4e8b-b3c2-7d9e1f0a4b55")(
        max_streams=None
    ).start()
    day = project["bars"].filter(pl.col("ts") >= DAY_START).sort("ts")
    for stub in (champion, challenger):  # market orders fill near the session's prices
        for sym, px in day.group_by("symbol").agg(pl.col("open").first()).iter_rows():
            stub.set_price(sym, px)
    monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    monkeypatch.setenv("APCA_CHALLENGER_API_KEY_ID", KEY2)
    monkeypatch.setenv("APCA_CHALLENGER_API_SECRET_KEY", SECRET2)
    monkeypatch.setenv("WB_ALPACA__TRADING_URL", champion.url)
    monkeypatch.setenv("WB_EXECUTION__SHADOW__CHALLENGER_BROKER", "alpaca")
    monkeypatch.setenv("WB_EXECUTION__SHADOW__TRADING_URL", challenger.url)
    try:
        yield champion, challenger
    finally:
        champion.stop()
        challenger.stop()


def test_a_paper_session_is_reviewed(project, accounts, tmp_path) -> None:
    from workbench.cli import app

    champion, other = accounts
    args = ["session", "run", "--strategy", STRATEGY, "--broker", "alpaca", "--mode", "replay",
            "--date", DAY, "--store", str(project["tmp"] / "bars"),
            "--ledger", f"sqlite:///{tmp_path / 'paper.db'}", "--symbols", ",".join(SYMBOLS),
            "--model", f"{STRATEGY}@{CHALLENGER}", "--allow", "ungated", "--json"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    summary = _json_line(out.output)
    assert summary["fills"] > 0 and len(champion.orders) >= summary["orders"] > 0
    assert not other.orders  # a plain session trades the APCA_API_* account only
    (run,) = [r for r in _divergence_runs(project["versions"][CHALLENGER])
              if ":alpaca:" in r.data.tags["session_id"]]  # fmt: skip
    assert (run.data.tags["model_alias"], run.data.tags["divergence_status"]) == (CHALLENGER, "ok")
    assert run.data.metrics["pnl_session"] == pytest.approx(summary["net_pnl"], abs=0.01)
    assert run.data.tags["model_name"] == STRATEGY
    mv = mlflow.MlflowClient().get_model_version(STRATEGY, project["versions"][CHALLENGER])
    assert mv.tags[f"{DIVERGENCE_TAG}.run_id"] == run.info.run_id
    for k in ("pnl_session", "pnl_backtest", "pnl_diff"):
        assert float(mv.tags[f"{DIVERGENCE_TAG}.{k}"]) == pytest.approx(
            run.data.metrics[k], rel=1e-5, abs=1e-9
        )
    assert KEY_ID not in out.output and SECRET not in out.output


def _broker_ids(ledger: Path) -> set[str]:
    led = OrderLedger(f"sqlite:///{ledger}")
    try:
        (rec,) = led.sessions()
        return set(led.frames(rec.session_id)["orders"]["order_id"].to_list())
    finally:
        led.close()


def test_the_challenger_trades_its_own_paper_account(project, accounts, tmp_path, capsys) -> None:
    from workbench.cli_review import ledger_name, run_shadow_day

    champion, challenger = accounts
    cfg = load_config(REPO)
    printed: list[str] = []
    out = run_shadow_day(
        cfg, model_name=STRATEGY, strategy=STRATEGY, timeframe="5Min", symbols=SYMBOLS,
        session_date=DAY, store_root=str(project["tmp"] / "bars"), state_dir=str(tmp_path),
        allow_model=("ungated",), broker="alpaca", echo=printed.append,
    )  # fmt: skip
    assert out["champion"]["broker"] == out["challenger"]["broker"] == "alpaca"
    assert out["champion"]["version"] == project["versions"][CHAMPION]
    assert out["challenger"]["version"] == project["versions"][CHALLENGER]
    assert any(
        p.startswith(f"challenger: its own paper account at {challenger.url}") for p in printed
    )
    # each arm's orders went to its own account, and each ledger holds only its own arm's
    ids = {
        role: _broker_ids(tmp_path / ledger_name(role, DAY)) for role in ("champion", "challenger")
    }
    assert ids["champion"] and ids["challenger"]
    assert ids["champion"] == set(champion.orders)
    assert ids["challenger"] == set(challenger.orders)
    assert not ids["champion"] & ids["challenger"]
    # `wb compare` pairs the two arms' recorded sessions
    from workbench.cli import app

    cmp = CliRunner().invoke(app, ["compare", "champion", "challenger", "--model", STRATEGY,
                                   "--json"])  # fmt: skip
    assert cmp.exit_code == 0, cmp.output
    got = _json_line(cmp.output)
    assert got["n"] == 1 and got["sessions"] == [DAY]
    want = out["challenger"]["session_return"] - out["champion"]["session_return"]
    assert got["mean_diff"] == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert got["divergence_champion"] == pytest.approx(out["champion"]["pnl_diff"])
    # no key in any output, MLflow param, tag or file the sessions wrote
    client = mlflow.MlflowClient()
    exps = [e.experiment_id for e in mlflow.search_experiments()]
    texts = ["\n".join(printed), capsys.readouterr().out, json.dumps(out, default=str)]
    texts += [json.dumps([r.data.params, r.data.tags]) for r in client.search_runs(exps)]
    texts += [json.dumps(v.tags) for v in client.search_model_versions(f"name = '{STRATEGY}'")]
    files = [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    for text in texts + files:
        for secret in (KEY_ID, SECRET, KEY2, SECRET2):
            assert secret not in text


def test_the_challengers_account_is_refused_when_missing_or_shared(
    project, accounts, tmp_path, monkeypatch
) -> None:
    from workbench.cli_review import run_shadow_day

    champion, challenger = accounts

    def shadow(state: str) -> None:
        run_shadow_day(
            load_config(REPO), model_name=STRATEGY, strategy=STRATEGY, timeframe="5Min",
            symbols=SYMBOLS, session_date=DAY, store_root=str(project["tmp"] / "bars"),
            state_dir=str(tmp_path / state), allow_model=("ungated",), broker="alpaca",
            echo=lambda _: None,
        )  # fmt: skip

    monkeypatch.delenv("APCA_CHALLENGER_API_SECRET_KEY")
    with pytest.raises(CredentialsError) as exc:
        shadow("missing")
    msg = str(exc.value)
    assert "APCA_CHALLENGER_API_SECRET_KEY is not set" in msg and "export" in msg
    assert "challenger_broker: sim" in msg and SECRET2 not in msg and KEY2 not in msg
    monkeypatch.setenv("APCA_CHALLENGER_API_SECRET_KEY", SECRET)
    monkeypatch.setenv("APCA_CHALLENGER_API_KEY_ID", KEY_ID)  # the champion's keys
    with pytest.raises(ConfigError, match="same key id as APCA_API_KEY_ID") as exc:
        shadow("same-keys")
    assert KEY_ID not in str(exc.value) and SECRET not in str(exc.value)
    # other keys, but the account endpoint says it is the champion's account
    same = _own_account(KEY2, SECRET2, trading_stub.ACCOUNT_ID)(max_streams=None).start()
    try:
        monkeypatch.setenv("APCA_CHALLENGER_API_KEY_ID", KEY2)
        monkeypatch.setenv("APCA_CHALLENGER_API_SECRET_KEY", SECRET2)
        monkeypatch.setenv("WB_EXECUTION__SHADOW__TRADING_URL", same.url)
        with pytest.raises(ConfigError, match="is the champion's account") as exc:
            shadow("same-account")
        assert trading_stub.ACCOUNT_ID not in str(exc.value)
        assert not same.orders and not champion.orders and not challenger.orders
    finally:
        same.stop()
    assert not any((tmp_path / s).exists() for s in ("missing", "same-keys", "same-account"))
    # the CLI says the same and exits 2
    from workbench.cli import app

    monkeypatch.delenv("APCA_CHALLENGER_API_KEY_ID")
    out = CliRunner().invoke(app, ["shadow", "--date", DAY, "--broker", "alpaca",
                                   "--state-dir", str(tmp_path / "cli")])  # fmt: skip
    assert out.exit_code == 2 and "APCA_CHALLENGER_API_KEY_ID" in " ".join(out.output.split())
