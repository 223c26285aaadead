"""The research pipeline end to end on the simulator, then nbval over the executed notebooks."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import mlflow
import polars as pl
import pytest

from workbench.config import load_config
from workbench.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[2]
# made up per run (nothing credential-like is committed); present in every kernel, never in outputs
KEY_ID, SECRET = "PK" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)
STEPS = ["ingest", "features", "train", "validate", "trade_session"]
# Half a year of 5-minute bars instead of the spec's full year: every step, the 16-trial search,
# the PBO's CPCV paths and the 4 walk-forward folds still run, with the planted edge recovered by
# a wide margin (IC ~0.22, walk-forward deflated Sharpe ~0.999, PBO ~0.03, ~3000 trades) at about
# half the LightGBM work (the run, nbval's re-execution and `reproduce` all retrain).
RESEARCH = ("end=2024-06-28",)
# A martingale is refused just the same on a quarter and a short search (nothing to find there).
NULL = ("alpha=0", "end=2024-03-28", "n_trials=4")


def _run_research(tmp: Path, *params: str) -> tuple:
    """Run the research pipeline with its own MLflow, stores and Optuna storage under ``tmp``."""
    mp = pytest.MonkeyPatch()
    for k in list(os.environ):
        if k.startswith("WB_") or k == "MLFLOW_TRACKING_URI":
            mp.delenv(k)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    mp.setenv("WB_MLFLOW__ARTIFACT_ROOT", str(tmp / "mlartifacts"))
    mp.setenv("WB_STORE__FEATURES_ROOT", str(tmp / "features"))
    mp.setenv("WB_STRATEGIES__INTRADAY_REVERSAL__SEARCH__STORAGE", f"sqlite:///{tmp / 'optuna.db'}")
    mp.setenv("WB_RISK__STATE_URL", f"sqlite:///{tmp / 'risk.db'}")  # not the project's runs/
    mp.setenv("WB_ALERTS__HISTORY_PATH", str(tmp / "alerts.jsonl"))  # the session's alerts too
    mp.setenv("APCA_API_KEY_ID", KEY_ID)  # present in every kernel: must never reach an output
    mp.setenv("APCA_API_SECRET_KEY", SECRET)
    res = run_pipeline(
        "research",
        [f"data_dir={tmp / 'data'}", *params],
        cfg=load_config(REPO),
        runs_root=tmp / "runs",
        echo=lambda _: None,
    )
    return res, mp


@pytest.fixture(scope="module")
def research(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    tmp = tmp_path_factory.mktemp("research")
    res, mp = _run_research(tmp, *RESEARCH)
    yield res, tmp
    mp.undo()


@pytest.fixture(scope="module")
def null_research(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The null run, with its own MLflow; the environment is restored right after it."""
    tmp = tmp_path_factory.mktemp("null_research")
    before = mlflow.get_tracking_uri()
    res, mp = _run_research(tmp, *NULL)
    mp.undo()
    mlflow.set_tracking_uri(before)
    return res, f"sqlite:///{tmp / 'mlflow.db'}"


def _step_runs(res: object, uri: str | None = None) -> dict[str, object]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(res.parent_run_id)  # type: ignore[attr-defined]
    kids = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{res.parent_run_id}'",  # type: ignore[attr-defined]
    )
    return {r.data.tags["step"]: r for r in kids if "step" in r.data.tags}


@pytest.mark.slow
def test_pipeline_runs_tracks_and_promotes(research: tuple) -> None:
    res, _ = research
    assert res.ok, res.summary()
    client = mlflow.MlflowClient()
    parent = client.get_run(res.parent_run_id)
    assert parent.data.tags["pipeline"] == "research" and parent.info.status == "FINISHED"
    assert parent.data.params["alpha"] == "0.25"
    by_step = _step_runs(res)
    assert sorted(by_step) == sorted(STEPS)
    fp = by_step["ingest"].data.tags["data_fingerprint"]
    assert len(fp) == 64
    for step, run in by_step.items():
        tags = run.data.tags
        for t in ("pipeline", "step", "config_hash", "data_fingerprint", "git_commit"):
            assert tags.get(t), (step, t)
        names = {
            a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, "notebook")
        }
        assert any(n.endswith(".ipynb") for n in names) and any(
            n.endswith(".html") for n in names
        ), step
        assert client.list_artifacts(run.info.run_id, "figures"), f"{step} logged no figure"
    # train registered a model with signature; validate's gates passed and set the alias
    train_out, val_out = res.outputs("train"), res.outputs("validate")
    assert val_out["passed"] is True
    mv = client.get_model_version_by_alias("intraday_reversal", "challenger")
    assert str(mv.version) == train_out["model_version"]
    assert by_step["validate"].data.tags["gates"] == "pass"
    assert by_step["validate"].data.metrics["n_trades"] >= 100
    vm = by_step["validate"].data.metrics  # the gates judged the walk-forward result
    assert vm["wf_folds"] == 4 and vm["wf_n_trades"] >= 100 and vm["wf_deflated_sharpe"] > 0.95
    # the out-of-sample IC recovers the planted IC (0.25, about 0.9x of it at 5Min)
    assert 0.15 < by_step["validate"].data.metrics["ic"] < 0.3
    # the session traded the challenger and wrote fills and PnL
    fills = pl.read_parquet(res.outputs("trade_session")["fills_path"])
    assert fills.height > 0 and (fills["ts"] > fills["decided_at"]).all()
    assert by_step["trade_session"].data.params["model_alias"] == "challenger"


@pytest.mark.slow
def test_the_sessions_divergence_report_is_linked_from_the_model_version(research: tuple) -> None:
    """What `make demo` leaves in the MLflow UI: the session run, its divergence report (a child
    run tagged with the traded version, its attribution table and plotly figure) and, on the
    model version, the report's summary and run id (also as metrics of the logged model)."""
    from workbench.execution.divergence import DIVERGENCE_TAG

    res, _ = research
    client = mlflow.MlflowClient()
    session = _step_runs(res)["trade_session"]
    version = session.data.params["model_version"]
    (div,) = client.search_runs(
        [session.info.experiment_id],
        f"tags.mlflow.parentRunId = '{session.info.run_id}' and tags.report = 'divergence'",
    )
    tags = div.data.tags
    assert (tags["model_name"], tags["model_version"], tags["model_alias"]) == (
        "intraday_reversal", version, "challenger",
    )  # fmt: skip
    assert tags["session_date"] == session.data.params["traded_session"]
    arts = {a.path for a in client.list_artifacts(div.info.run_id, "divergence")}
    assert {"divergence/divergence.html", "divergence/attribution.json"} <= arts
    html = Path(client.download_artifacts(div.info.run_id, "divergence/divergence.html"))
    assert "plotly" in html.read_text()[:200_000].lower()
    m = div.data.metrics
    # the report's session side is the session the step traded
    assert m["pnl_session"] == pytest.approx(session.data.metrics["net_pnl"], rel=1e-6, abs=0.01)
    buckets = ("signal", "execution", "costs", "denials", "timing", "other")
    assert sum(m[f"attr_{b}"] for b in buckets) == pytest.approx(m["pnl_diff"], abs=0.01)
    assert session.data.metrics["divergence_pnl_diff"] == pytest.approx(m["pnl_diff"])
    # linked from the model version: the summary on its tags, the latest report's run id
    mv = client.get_model_version("intraday_reversal", version)
    latest = client.search_runs(
        [session.info.experiment_id],
        f"tags.report = 'divergence' and tags.model_version = '{version}'",
        order_by=["attributes.start_time DESC"],
    )[0]
    assert mv.tags[f"{DIVERGENCE_TAG}.run_id"] == latest.info.run_id
    if latest.info.run_id == div.info.run_id:
        for k in ("pnl_session", "pnl_backtest", "pnl_diff", "attr_execution"):
            assert float(mv.tags[f"{DIVERGENCE_TAG}.{k}"]) == pytest.approx(m[k], rel=1e-5)
    model_id = mv.model_id or mv.source[len("models:/") :].split("/")[0]  # models:/m-<id>
    linked = {x.key: x.run_id for x in mlflow.get_logged_model(model_id).metrics}
    assert {"divergence_pnl_diff", "divergence_attr_execution"} <= set(linked)
    assert linked["divergence_pnl_diff"] in {r.info.run_id for r in client.search_runs(
        [session.info.experiment_id], f"tags.report = 'divergence' and tags.model_version = '{version}'"
    )}  # fmt: skip


@pytest.mark.slow
def test_wb_session_run_replays_resumes_and_reports(
    research: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`wb session run` on sim trades the challenger; the same command again resumes the finished
    session from its ledger (nothing is sent twice) with the same outcome; `wb session status`."""
    from typer.testing import CliRunner

    from workbench.cli import app

    # the review after the session refits the slippage model: in this test's folder
    monkeypatch.setenv("WB_BACKTEST__COSTS__SLIPPAGE_PATH", str(tmp_path / "slippage"))
    res, _ = research
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    args = [
        "session", "run", "--strategy", "intraday_reversal", "--broker", "sim", "--mode", "replay",
        "--store", res.outputs("ingest")["store_root"], "--ledger", ledger,
        "--model", "intraday_reversal@challenger", "--symbols", "SYN000,SYN001,SYN002,SYN003",
        "--json",
    ]  # fmt: skip
    runner = CliRunner()

    def run() -> dict:
        out = runner.invoke(app, args)
        assert out.exit_code == 0, out.output
        return json.loads([ln for ln in out.output.splitlines() if ln.startswith("{")][-1])

    first, again = run(), run()
    assert first["status"] == "done" and first["fills"] > 0 and "challenger" in first["model"]
    assert again == first
    st = runner.invoke(app, ["session", "status", "--ledger", ledger, "--json"])
    assert st.exit_code == 0, st.output
    status = json.loads(st.output.strip().splitlines()[-1])
    assert status["status"] == "done" and status["positions"] == {}
    assert len(status["fills"]) == first["fills"] and status["open_orders"] == 0
    assert len({f["execution_id"] for f in status["fills"]}) == first["fills"]


@pytest.mark.slow
def test_search_is_tracked_and_feeds_the_overfitting_gates(research: tuple) -> None:
    from workbench.models.registry import PARAMS_TAG

    res, _ = research
    client = mlflow.MlflowClient()
    train = _step_runs(res)["train"]
    tm, tr = train.data.metrics, train.data.params
    # every Optuna trial is a nested run of the train step, with parameters and fold scores
    trials = client.search_runs(
        [train.info.experiment_id], f"tags.mlflow.parentRunId = '{train.info.run_id}'"
    )
    assert len(trials) == tm["search_trials"] == 16
    assert {t.data.tags["state"] for t in trials} <= {"complete", "pruned"}
    done = [t for t in trials if t.data.tags["state"] == "complete"]
    assert len(done) == tm["search_completed"] >= 2
    assert all("sharpe_fold_3" in t.data.metrics and "num_leaves" in t.data.params for t in done)
    arts = {a.path for a in client.list_artifacts(train.info.run_id, f"search/{tr['study_name']}")}
    assert {
        f"search/{tr['study_name']}/{n}.html"
        for n in ("optimization_history", "param_importances", "fold_scores")
    } <= arts
    # the refit model carries its hyperparameters; validation retrained exactly those
    out = res.outputs("train")
    mv = client.get_model_version("intraday_reversal", out["model_version"])
    params = json.loads(mv.tags[PARAMS_TAG])
    assert (
        params["num_leaves"] == int(tr["lgbm.num_leaves"]) and params["objective"] == "regression"
    )
    # the hand-off: Sharpe ratios of the completed trials, every trial counted, PBO from CPCV
    assert len(out["trial_sharpes"]) == tm["search_completed"] and out["n_trials"] == 16
    assert 0 <= out["pbo"] == tm["pbo"] < 0.3 and 0 < out["trial_correlation"] <= 1
    vm = _step_runs(res)["validate"].data.metrics
    assert vm["pbo"] == out["pbo"] and vm["wf_n_trials"] == tm["effective_trials"] < 16
    assert vm["wf_deflated_sharpe"] <= vm["wf_psr"]


@pytest.mark.slow
def test_no_secret_reaches_parameters_or_outputs(research: tuple) -> None:
    res, tmp = research
    for path in [*res.run_dir.rglob("*"), *(tmp / "mlartifacts").rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert KEY_ID.encode() not in data and SECRET.encode() not in data, path
    client = mlflow.MlflowClient()
    parent = client.get_run(res.parent_run_id)
    runs = client.search_runs([parent.info.experiment_id])
    assert len(runs) >= 6
    for run in runs:
        text = json.dumps([run.data.params, run.data.tags])
        assert KEY_ID not in text and SECRET not in text


@pytest.mark.slow
def test_executed_notebooks_pass_nbval(research: tuple, nbval) -> None:
    res, _ = research
    notebooks = sorted(str(p) for p in res.run_dir.glob("0[1-4]_*.ipynb"))
    proc = nbval(notebooks, res.run_dir, timeout=600)
    assert proc.returncode == 0, proc.stdout[:5000] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


@pytest.mark.slow
def test_reproduce_reruns_a_step_and_matches(research: tuple) -> None:
    from workbench.pipeline.reproduce import reproduce

    res, _ = research
    train = next(s for s in res.steps if s.step == "train")
    client = mlflow.MlflowClient()
    versions = {str(v.version) for v in client.search_model_versions("name = 'intraday_reversal'")}
    rep = reproduce(train.mlflow_run_id, cfg=load_config(REPO))
    assert rep.same_data and rep.matches, rep.comparison
    assert rep.new_run_id != train.mlflow_run_id
    # every trial ran again (a fresh study, not the recorded one resumed with nothing left to do)
    exp = client.get_run(rep.new_run_id).info.experiment_id
    trials = client.search_runs([exp], f"tags.mlflow.parentRunId = '{rep.new_run_id}'")
    assert len([t for t in trials if t.info.run_name.startswith("trial-")]) == int(
        train.metrics["search_trials"]
    ) > 0
    # nothing registered in the project's registry
    assert {str(v.version) for v in client.search_model_versions("name = 'intraday_reversal'")} == versions
    manifest = mlflow.artifacts.load_dict(f"runs:/{rep.new_run_id}/manifest.json")
    assert manifest["seeds"] == {"seed": 7} and len(manifest["lock_hash"]) == 64
    assert (
        manifest["data_fingerprint"]
        == mlflow.MlflowClient().get_run(train.mlflow_run_id).data.tags["data_fingerprint"]
    )


@pytest.mark.slow
def test_promote_needs_a_better_challenger(research: tuple) -> None:
    import numpy as np

    from workbench.models.lgbm import fit_lgbm
    from workbench.models.lifecycle import GATE_RUN_TAG, GATE_TAG
    from workbench.models.promotion import PromotionError, demote, promote
    from workbench.models.registry import log_lightgbm, set_alias
    from workbench.validation.evaluate import feature_columns

    res, _ = research
    cfg = load_config(REPO)
    client = mlflow.MlflowClient()
    first = promote(cfg, "intraday_reversal")
    assert first.promoted and first.reason == "no champion yet"
    champ = client.get_model_version_by_alias("intraday_reversal", "champion")
    assert champ.tags["promotion_reason"] == "no champion yet"
    assert champ.tags[GATE_TAG] == "pass"  # the validate step's gate record
    assert not promote(cfg, "intraday_reversal").promoted  # already champion
    with pytest.raises(PromotionError, match="--force needs --reason"):
        promote(cfg, "intraday_reversal", force=True)

    # a challenger trained on shuffled labels must not replace the champion: both are
    # re-evaluated on the champion's validation window, rebuilt from the store
    table = pl.read_parquet(res.outputs("features")["features_path"]).drop_nulls("label")
    noise = table.with_columns(
        label=pl.Series(np.random.default_rng(0).permutation(table["label"].to_numpy()))
    )
    feats = feature_columns(table)
    with mlflow.start_run(run_name="noise model"):
        bad = log_lightgbm(
            fit_lgbm(noise, feats, params={"num_boost_round": 50}),
            table.select(feats).to_pandas(),
            registered_name="intraday_reversal",
        )
    for k in (GATE_TAG, GATE_RUN_TAG):  # judged on the same window as the champion
        client.set_model_version_tag("intraday_reversal", bad.version, k, champ.tags[k])
    set_alias("intraday_reversal", "challenger", bad.version)
    second = promote(cfg, "intraday_reversal")
    assert not second.promoted and "not <= alpha" in second.reason, second.reason
    assert second.window_test is not None and second.window_test.mean_diff < 0
    assert str(
        client.get_model_version_by_alias("intraday_reversal", "champion").version
    ) == str(champ.version)
    forced = promote(
        cfg,
        "intraday_reversal",
        force=True,
        reason="operator override in a test",
    )
    assert forced.promoted and forced.forced
    assert (
        str(client.get_model_version_by_alias("intraday_reversal", "champion").version)
        == bad.version
    )
    decision = json.loads(
        client.get_registered_model("intraday_reversal").tags["last_promotion_decision"]
    )
    assert decision["forced"] is True and "operator override" in decision["reason"]
    back = demote(cfg, "intraday_reversal", reason="the override was a mistake")
    assert (back.demoted, back.champion) == (bad.version, str(champ.version))


@pytest.mark.slow
class TestNullMarket:
    """In a class of its own so that `make test` (xdist, --dist loadscope: a module or a class per
    worker at a time) builds the null run on one worker while the other builds the research run."""

    def test_null_market_ends_with_the_gates_refusing(self, null_research: tuple) -> None:
        res, uri = null_research
        assert res.ok, res.summary()  # the pipeline ran; the gates said no
        client = mlflow.MlflowClient(tracking_uri=uri)
        by_step = _step_runs(res, uri)
        assert res.outputs("validate")["passed"] is False
        assert by_step["validate"].data.tags["gates"] == "fail"
        failed = {
            k
            for k, v in by_step["validate"].data.tags.items()
            if k.startswith("gate.") and v == "fail"
        }
        assert {"gate.min_sharpe", "gate.min_deflated_sharpe"} <= failed
        with pytest.raises(mlflow.exceptions.MlflowException):
            client.get_model_version_by_alias("intraday_reversal", "challenger")
        # the gates refused: trade_session was skipped (no notebook ran), and the summary says why
        summary = json.loads((res.run_dir / "summary.json").read_text())
        assert [(s["step"], s["status"]) for s in summary["steps"]] == [
            *((s, "ok") for s in STEPS[:-1]),
            ("trade_session", "skipped"),
        ]
        why = "condition ${steps.validate.passed} is false (step 'validate' handed on passed=false)"
        assert summary["skipped"] == {"trade_session": why}
        assert by_step["trade_session"].data.tags["skip_reason"] == why
        assert not list(res.run_dir.glob("*trade_session*.ipynb"))
        assert "fills_path" not in res.outputs("trade_session")


# Run All in JupyterLab after `wb run research`: every stage notebook with its defaults in the
# project the run belongs to (its runs/ folder holds the run's <step>.outputs.json). Only the
# search is made small, through the environment (the strategy's config, not a parameter): the
# train step's defaults would otherwise repeat the run's 16-trial search.
SMALL_SEARCH = {
    "WB_STRATEGIES__INTRADAY_REVERSAL__SEARCH__N_TRIALS": "2",
    "WB_STRATEGIES__INTRADAY_REVERSAL__SEARCH__N_FOLDS": "2",
    "WB_STRATEGIES__INTRADAY_REVERSAL__SEARCH__PBO_CONFIGS": "2",
}


def _has_alias(name: str, alias: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return False
    return True


def _interactive_runs() -> dict[str, object]:
    """The latest MLflow run of each step run outside a pipeline, by step."""
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.pipeline = 'interactive'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )
    return {r.data.tags["step"]: r for r in runs if "step" in r.data.tags}


@pytest.mark.slow
@pytest.mark.notebook
def test_every_notebook_runs_with_its_defaults_after_the_pipeline_run(
    research: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stage notebook, executed with no parameters, runs top to bottom, and its empty inputs
    take what the run's step before it handed on (store, feature table, model version, split)."""
    import shutil

    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from workbench.pipeline.runner import kernel_manager

    res, tmp = research
    assert res.ok, res.summary()
    shutil.copytree(REPO / "config", tmp / "config", dirs_exist_ok=True)
    (tmp / "notebooks").mkdir(exist_ok=True)
    names = sorted(p.stem for p in (REPO / "notebooks").glob("0*.ipynb"))
    for name in names:
        shutil.copy2(REPO / "notebooks" / f"{name}.ipynb", tmp / "notebooks" / f"{name}.ipynb")
    monkeypatch.setenv("WB_PROJECT_ROOT", str(tmp))
    for k, v in SMALL_SEARCH.items():
        monkeypatch.setenv(k, v)
    out_dir = tmp / "defaults"
    out_dir.mkdir(exist_ok=True)
    failed = {}
    for name in names:
        out = out_dir / f"{name}.ipynb"
        with kernel_manager() as km:
            try:
                papermill.execute_notebook(
                    str(tmp / "notebooks" / f"{name}.ipynb"), str(out), kernel_name="python3",
                    progress_bar=False, cwd=str(tmp / "notebooks"), km=km,
                )  # fmt: skip
            except PapermillExecutionError as exc:
                failed[name] = f"{exc.ename}: {exc.evalue}"
        errors = [
            o
            for c in nbformat.read(out, 4).cells
            for o in c.get("outputs", [])
            if o.get("output_type") == "error"
        ]
        assert not errors or name in failed, name
    assert failed == {}, failed
    ran = _interactive_runs()
    steps = {
        "ingest", "features", "train", "validate", "trade_session", "portfolio",
        "session_review", "monitor",
    }  # fmt: skip
    assert set(ran) == steps and all(r.info.status == "FINISHED" for r in ran.values())
    ingest, features, train = res.outputs("ingest"), res.outputs("features"), res.outputs("train")
    p = {step: run.data.params for step, run in ran.items()}
    store = ingest["store_root"]
    # the empty store folder of every later step: the run's ingest store
    for step in ("features", "train", "validate", "trade_session", "monitor"):
        assert p[step]["store_root"] == store, step
    table = features["features_path"]
    assert p["train"]["features_path"] == p["validate"]["features_path"] == table
    # validate took the run's train outputs (not the interactive train's, which hands on nothing)
    assert p["validate"]["model_version"] == train["model_version"]
    assert p["validate"]["split_ts"] == train["split_ts"]
    assert p["validate"]["n_trials"] == str(train["n_trials"])
    # the session traded its default alias (champion, else challenger): the version it names
    # (the run's own model, unless an earlier test of this module promoted one to champion)
    traded = p["trade_session"]
    want = "champion" if _has_alias(train["model_name"], "champion") else "challenger"
    assert traded["model_alias"] == want
    alias_version = mlflow.MlflowClient().get_model_version_by_alias(train["model_name"], want)
    assert traded["model_version"] == str(alias_version.version)
    if want == "challenger":
        assert traded["model_version"] == train["model_version"]
    # the train step's empty search size was the strategy's (made small above)
    assert ran["train"].data.metrics["search_trials"] == 2
    # ingest has no earlier step: its empty store is store.root, in this project
    assert p["ingest"]["store_root"] == ""
    assert (tmp / "data" / "bars").is_dir()
    # the portfolio found the validated strategy
    assert "intraday_reversal" in json.loads(p["portfolio"]["validate_run_ids"])
