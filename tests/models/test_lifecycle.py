"""Model lifecycle: a session trades only a version with a passing gate record, younger than
``models.max_age_days`` and not flagged as drifted, unless an explicit flag allows it; the age
is shown by ``wb session status``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from workbench import tracking
from workbench.config import load_config
from workbench.execution.ledger import OrderLedger
from workbench.models.estimator import LGBMForecaster
from workbench.models.lifecycle import (
    DRIFT_TAG,
    ModelNotTradeableError,
    check_tradeable,
    clear_drift,
    flag_drift_from_outputs,
    model_age_status,
    record_gate,
    train_end,
)
from workbench.models.registry import CHAMPION, ModelRef, log_lightgbm, set_alias

from .conftest import FEATURES, make_table

REPO = Path(__file__).resolve().parents[2]
STRAT = "intraday_reversal"
END = datetime(2024, 1, 31, 20, 55, tzinfo=UTC)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One tracking store for the module: an unvalidated version and a validated one."""
    tmp = tmp_path_factory.mktemp("lifecycle")
    mp = pytest.MonkeyPatch()
    for k in list(os.environ):
        if k.startswith("WB_") or k == "MLFLOW_TRACKING_URI":
            mp.delenv(k)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    mp.setenv("WB_MLFLOW__ARTIFACT_ROOT", str(tmp / "mlartifacts"))
    mp.setenv("WB_EXECUTION__LEDGER_URL", f"sqlite:///{tmp / 'ledger.db'}")
    mp.setenv("WB_RISK__STATE_URL", f"sqlite:///{tmp / 'risk.db'}")
    before = mlflow.get_tracking_uri()
    cfg = load_config(REPO)
    tracking.setup(cfg)
    table = make_table(n_ts=100)
    model = LGBMForecaster(num_boost_round=5).fit(table.select(FEATURES), table["label"])
    refs = []
    with mlflow.start_run() as run:
        for tags in ({}, {"split_ts": "2024-01-31T21:00:00+00:00"}):
            refs.append(log_lightgbm(model, table.select(FEATURES).to_pandas(),
                                     registered_name=STRAT, tags=tags))  # fmt: skip
        run_id = run.info.run_id
    ungated, gated = (ModelRef(STRAT, r.version, None, "", "") for r in refs)
    record_gate(gated, passed=True, run_id=run_id, window=None, train_end=END,
                metrics={"sharpe": 1.5, "deflated_sharpe": 0.97})  # fmt: skip
    yield {"cfg": cfg, "ungated": ungated, "gated": gated, "tmp": tmp, "run_id": run_id}
    mp.undo()
    mlflow.set_tracking_uri(before)


def _with(cfg, **models):
    return cfg.model_copy(update={"models": cfg.models.model_copy(update=models)})


def test_a_version_without_a_gate_record_is_refused_unless_allowed(registry: dict) -> None:
    cfg, ref = registry["cfg"], registry["ungated"]
    at = END + timedelta(days=1)
    with pytest.raises(ModelNotTradeableError) as exc:
        check_tradeable(cfg, ref, at=at)
    msg = str(exc.value)
    assert f"{STRAT} v{ref.version} has no gate record" in msg and "--allow ungated" in msg
    # it has no training window end either: its age is unknown, also refused
    assert "age against models.max_age_days 180 is unknown" in msg
    lines: list[str] = []
    out = check_tradeable(cfg, ref, at=at, allow=("ungated", "expired"), echo=lines.append)
    assert out.ok and len(out.warnings) == 2 and out.age_days is None
    assert lines[0].startswith(f"model {STRAT} v{ref.version}: training window end unknown")
    with pytest.raises(ModelNotTradeableError, match="unknown allowance"):
        check_tradeable(cfg, ref, at=at, allow=("everything",))


def test_the_age_runs_from_the_training_window_end(registry: dict) -> None:
    cfg, ref = registry["cfg"], registry["gated"]
    assert train_end(ref) == END  # the recorded end, not the later split_ts tag
    young = check_tradeable(cfg, ref, at=END + timedelta(days=100))
    assert young.ok and young.age_days == pytest.approx(100.0) and not young.warnings
    assert "100.0 days old" in young.describe() and "gates passed" in young.describe()
    old_at = END + timedelta(days=180, hours=1)
    with pytest.raises(ModelNotTradeableError) as exc:
        check_tradeable(cfg, ref, at=old_at)
    msg = str(exc.value)
    assert f"v{ref.version} is 180.0 days past its training window end (2024-01-31)" in msg
    assert "models.max_age_days 180" in msg and "--allow expired" in msg
    exactly = check_tradeable(cfg, ref, at=END + timedelta(days=180))  # the limit itself trades
    assert exactly.ok
    warned = check_tradeable(_with(cfg, on_expired="warn"), ref, at=old_at)
    assert warned.ok and "older than models.max_age_days" in warned.warnings[0]
    assert check_tradeable(cfg, ref, at=old_at, allow=["expired"]).ok
    assert check_tradeable(_with(cfg, max_age_days=None), ref, at=old_at).ok


def test_a_drift_flag_from_monitoring_stops_the_version(registry: dict) -> None:
    cfg, ref = registry["cfg"], registry["gated"]
    at = END + timedelta(days=3)
    calm = {"psi": {"ret_1": 0.05, "prediction": 0.2, "rsi_14": None}}
    assert flag_drift_from_outputs(cfg, ref, calm) == []  # below psi_alert 0.25: no flag
    assert check_tradeable(cfg, ref, at=at).ok
    drifted = {"psi": {"ret_1": 0.05, "zscore_20": 0.31, "prediction": 0.25}}
    flagged = flag_drift_from_outputs(cfg, ref, drifted, run_id="monitor-run", at=at)
    assert flagged == ["prediction", "zscore_20"]  # at or past the alert threshold
    tag = json.loads(mlflow.MlflowClient().get_model_version(STRAT, ref.version).tags[DRIFT_TAG])
    assert tag["max_psi"] == 0.31 and tag["run_id"] == "monitor-run"
    with pytest.raises(ModelNotTradeableError, match=r"flagged as drifted.*PSI up to 0\.310"):
        check_tradeable(cfg, ref, at=at)
    assert check_tradeable(_with(cfg, on_drift="warn"), ref, at=at).warnings
    assert check_tradeable(cfg, ref, at=at, allow=("drifted",)).ok
    clear_drift(ref)
    assert check_tradeable(cfg, ref, at=at).ok


def test_a_session_refuses_before_anything_is_sent(registry: dict) -> None:
    from workbench.stages.session import run_trade_session

    cfg, ref, tmp = registry["cfg"], registry["ungated"], registry["tmp"]
    set_alias(STRAT, CHAMPION, ref.version)  # moved by hand, as in the MLflow UI
    printed: list[str] = []
    with pytest.raises(ModelNotTradeableError, match=f"refusing to trade {STRAT} v{ref.version}"):
        run_trade_session(
            cfg, store_root=str(tmp / "no-store"), model_name=STRAT, strategy=STRAT,
            timeframe="5Min", symbols=["SYN000"], session_date="2024-02-01",
            echo=printed.append,
        )  # fmt: skip
    assert not (tmp / "ledger.db").exists()  # no ledger, no broker, no order
    assert printed and "no gate record" in printed[0]
    from workbench.cli import app

    args = ["session", "run", "--strategy", STRAT, "--store", str(tmp / "no-store"),
            "--date", "2024-02-01", "--symbols", "SYN000"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    text = " ".join(out.output.split())
    assert out.exit_code == 2 and "refusing to trade" in text and "--allow ungated" in text
    # no gate record and no training window end: both allowed, the run gets past the check
    out = CliRunner().invoke(app, [*args, "--allow", "ungated", "--allow", "expired"])
    text = " ".join(out.output.split())
    assert out.exit_code == 2 and "refusing to trade" not in text and "allowed by" in text


def test_session_status_shows_the_model_age(registry: dict) -> None:
    from workbench.cli import app

    cfg, ref, tmp = registry["cfg"], registry["gated"], registry["tmp"]
    model = f"{STRAT} v{ref.version}"
    status = model_age_status(cfg, model, END + timedelta(days=200))
    assert status["model_age_days"] == pytest.approx(200.0) and status["model_expired"] is True
    assert status["model_gate"] is True and status["model_train_end"] == END.isoformat()
    assert model_age_status(cfg, "not a model label", END) == {}
    ledger = OrderLedger(f"sqlite:///{tmp / 'status-ledger.db'}")
    try:
        sid = "s-2024-02-05"
        ledger.open_session(sid, strategy=STRAT, broker="sim", mode="replay",
                            session_date=date(2024, 2, 5), params={"model": model})  # fmt: skip
        ledger.set_progress(sid, END + timedelta(days=5))
    finally:
        ledger.close()
    runner = CliRunner()
    url = f"sqlite:///{tmp / 'status-ledger.db'}"
    out = runner.invoke(app, ["session", "status", "--ledger", url, "--json"])
    assert out.exit_code == 0, out.output
    st = json.loads(out.output.strip().splitlines()[-1])
    assert st["model"] == model and st["model_age_days"] == pytest.approx(5.0)
    assert st["model_expired"] is False
    text = runner.invoke(app, ["session", "status", "--ledger", url])
    assert "5.0 days old at the session (max 180.0)" in " ".join(text.output.split())
