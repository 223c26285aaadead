"""The ingest stage sets the simulator from its parameters: seed, alpha and the planted edges of
the other strategies (``vwap_reversion``, ``trend``), which reach the bars and the provenance."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.config import WorkbenchConfig
from workbench.errors import ConfigError
from workbench.stages.ingest import run_ingest, simulator_config

ARGS = dict(
    source="synthetic", symbols=["SYN000"], timeframe="5Min", start="2024-01-02",
    end="2024-01-05", seed=3, alpha=0.0, progress=False,
)  # fmt: skip


def test_planted_edges_reach_the_bars_and_the_provenance(tmp_path: Path) -> None:
    cfg = WorkbenchConfig()
    plain = run_ingest(cfg, store_root=str(tmp_path / "plain"), **ARGS)
    trend = run_ingest(cfg, store_root=str(tmp_path / "trend"), trend=0.3, **ARGS)
    vwap = run_ingest(cfg, store_root=str(tmp_path / "vwap"), vwap_reversion=0.2, **ARGS)
    assert "trend" not in plain.provenance and "vwap_reversion" not in plain.provenance
    assert trend.provenance["trend"] == "0.3" and "vwap_reversion" not in trend.provenance
    assert vwap.provenance["vwap_reversion"] == "0.2"
    assert len({plain.fingerprint, trend.fingerprint, vwap.fingerprint}) == 3  # other bars


def test_unset_edges_keep_the_config_and_bad_ones_are_refused() -> None:
    cfg = WorkbenchConfig().model_copy(
        update={"simulator": WorkbenchConfig().simulator.model_copy(update={"trend": 0.2})}
    )
    kept = simulator_config(cfg, 1, 0.1)
    assert (kept.simulator.seed, kept.simulator.alpha, kept.simulator.trend) == (1, 0.1, 0.2)
    assert simulator_config(cfg, 1, 0.1, trend=0.0).simulator.trend == 0.0
    with pytest.raises((ConfigError, ValueError), match="vwap_reversion"):
        simulator_config(cfg, 1, 0.1, vwap_reversion=0.9)
