"""A planted shift in the simulator's feature distribution alerts within one monitoring run; no
shift gives no alert over 10 seeds.

The null is what PSI measures: live sessions drawn from the reference's own distribution (10
sessions picked at random from the same quarter, the other sessions are the reference). Taking
the *following* sessions instead is not a null on this simulator: its volatility regimes and
GARCH move ret_1/ret_3 between weeks (PSI up to ~0.25 measured), which is real drift. The shift:
the same sessions simulated with twice the volatility (same seed, so the same paths scaled).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from workbench.config import load_config
from workbench.data.sources.synthetic import SyntheticSource
from workbench.monitoring.monitor import live_features, run_monitor
from workbench.monitoring.reference import reference_frame

SYMBOLS = [f"SYN{i:03d}" for i in range(4)]
START, END = datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 3, 29, tzinfo=UTC)
FEATURE_SET = "intraday_reversal"


class Capture:
    name = "capture"
    min_severity = "info"

    def __init__(self) -> None:
        self.got = []

    def send(self, alert) -> None:
        self.got.append(alert)


def predict(rows: pl.DataFrame) -> np.ndarray:
    return -1e3 * rows["ret_1"].to_numpy()  # the simulator's planted reversal signal


def frames(cfg, seed: int, annual_vol: float) -> pl.DataFrame:
    bars = SyntheticSource(seed=seed, annual_vol=annual_vol).fetch(SYMBOLS, "5Min", START, END)
    feats = live_features(
        bars, FEATURE_SET, cfg, start=datetime(2024, 1, 8, tzinfo=UTC), predict=predict
    )
    return feats.with_columns(day=pl.col("ts").dt.date())


@pytest.fixture(scope="module")
def cfg():
    return load_config()


def monitoring_run(cfg, seed: int, shifted: bool):
    from workbench.monitoring.alerts import Alerter

    base = frames(cfg, seed, 0.25)
    days = base["day"].unique().sort().to_list()
    rng = np.random.default_rng(seed)
    live_days = set(rng.choice(np.array(days, dtype=object), 10, replace=False).tolist())
    ref_rows = base.filter(~pl.col("day").is_in(live_days))
    feats = [c for c in base.columns if c not in ("symbol", "ts", "day", "prediction")]
    reference = reference_frame(ref_rows, ref_rows["prediction"].to_numpy(), columns=feats)
    live_src = frames(cfg, seed, 0.5) if shifted else base
    live = live_src.filter(pl.col("day").is_in(live_days)).drop("day")
    cap = Capture()
    alerter = Alerter([cap], secrets=[])
    rep = run_monitor(
        cfg, model="sim v1", live=live, reference=reference, as_of=END, alerter=alerter
    )
    return rep, cap.got


@pytest.mark.parametrize("seed", range(10))
def test_no_shift_no_alert(cfg, seed: int) -> None:
    rep, got = monitoring_run(cfg, seed, shifted=False)
    assert rep.drift is not None and rep.drift.frame["n_live"].min() > 1000
    assert rep.drift.alerts == [] and rep.drift.max_psi < cfg.monitoring.psi_alert
    assert [a for a in got if a.kind == "drift" and a.severity == "critical"] == []
    assert not rep.retrain.retrain


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_volatility_shift_alerts_in_one_run(cfg, seed: int) -> None:
    rep, got = monitoring_run(cfg, seed, shifted=True)
    assert {"ret_1", "ret_3", "prediction"} <= set(rep.drift.alerts)
    crit = {a.values["column"] for a in got if a.kind == "drift" and a.severity == "critical"}
    assert {"ret_1", "ret_3", "prediction"} <= crit
    # scale-free features did not move: the alert names what shifted
    assert "time_of_day" not in crit and "volume_z_78" not in crit
    out = rep.outputs()
    assert out["psi"]["ret_1"] >= cfg.monitoring.psi_alert and out["retrain"] is False
    assert "retrain_on_drift is off" in out["retrain_reason"]
