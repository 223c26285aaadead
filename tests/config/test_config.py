"""Config: layering, strict keys with places and suggestions, secrets, hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from workbench.config import WorkbenchConfig, config_hash, load_config
from workbench.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for k in list(__import__("os").environ):
        if k.startswith("WB_") or k.startswith("APCA_"):
            monkeypatch.delenv(k)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "workbench.yaml").write_text(
        "data:\n  symbols: [AAA, BBB]\n  timeframe: 5Min\nsimulator:\n  seed: 3\n"
    )
    return tmp_path


def test_repo_config_loads_and_strategies_reference_feature_sets() -> None:
    cfg = load_config(REPO)
    for name, strat in cfg.strategies.items():
        assert strat.feature_set in cfg.feature_sets, name


def test_file_values_reach_the_model(project: Path) -> None:
    cfg = load_config(project)
    assert cfg.data.symbols == ("AAA", "BBB")
    assert cfg.simulator.seed == 3
    assert cfg.simulator.alpha == 0.0  # default kept


def test_unknown_key_names_key_place_and_suggestion(project: Path) -> None:
    (project / "config" / "workbench.yaml").write_text(
        "data:\n  symbols: [A]\nsimulator:\n  alpah: 0.1\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(project)
    msg = str(err.value)
    assert "simulator.alpah" in msg
    assert "workbench.yaml, line 4" in msg
    assert "did you mean 'alpha'" in msg


def test_unknown_section_is_rejected(project: Path) -> None:
    (project / "config" / "workbench.yaml").write_text("simulater:\n  seed: 1\n")
    with pytest.raises(ConfigError, match=r"'simulater'.*did you mean 'simulator'"):
        load_config(project)


def test_bad_value_names_field_value_and_place(project: Path) -> None:
    (project / "config" / "workbench.yaml").write_text("simulator:\n  alpha: 2.0\n")
    with pytest.raises(ConfigError, match=r"simulator\.alpha = 2\.0 at .*workbench\.yaml"):
        load_config(project)


def test_bad_timeframe_suggests(project: Path) -> None:
    (project / "config" / "workbench.yaml").write_text("data:\n  timeframe: 5min\n")
    with pytest.raises(ConfigError, match="5Min"):
        load_config(project)


def test_overlay_by_wb_env(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "config" / "research.yaml").write_text("simulator:\n  alpha: 0.05\n")
    monkeypatch.setenv("WB_ENV", "research")
    cfg = load_config(project)
    assert cfg.simulator.alpha == 0.05
    assert cfg.simulator.seed == 3  # from the base file


def test_missing_overlay_is_an_error(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WB_ENV", "nope")
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(project)


def test_env_override_any_field_parsed_as_yaml(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WB_SIMULATOR__ALPHA", "0.02")
    monkeypatch.setenv("WB_DATA__SYMBOLS", "[X, Y, Z]")
    monkeypatch.setenv("WB_ALPACA__DATA_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WB_BACKTEST__COSTS__HALF_SPREAD_BPS", "7")
    cfg = load_config(project)
    assert cfg.simulator.alpha == 0.02
    assert cfg.data.symbols == ("X", "Y", "Z")
    assert cfg.alpaca.data_url == "http://127.0.0.1:9"
    assert cfg.backtest.costs.half_spread_bps == 7


def test_env_override_typo_is_rejected(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WB_SIMULATOR__ALPAH", "0.02")
    with pytest.raises(ConfigError, match=r"simulator\.alpah.*environment.*alpha"):
        load_config(project)


def test_secrets_only_from_env_and_masked(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, secret = "PKTESTKEY0123456789", "s3cr3t-value-not-to-leak"
    monkeypatch.setenv("APCA_API_KEY_ID", key)
    monkeypatch.setenv("APCA_API_SECRET_KEY", secret)
    cfg = load_config(project)
    assert cfg.secrets.has_alpaca
    assert cfg.secrets.apca_api_secret_key.get_secret_value() == secret
    text = json.dumps(cfg.dump()) + repr(cfg) + str(cfg) + json.dumps(cfg.model_dump(mode="json"))
    assert key not in text and secret not in text
    assert "********" in json.dumps(cfg.dump())


def test_secrets_in_file_are_refused(project: Path) -> None:
    (project / "config" / "workbench.yaml").write_text("secrets:\n  apca_api_key_id: abc\n")
    with pytest.raises(ConfigError, match="only from the environment"):
        load_config(project)


def test_hash_is_stable_and_sensitive(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h1 = config_hash(load_config(project))
    assert h1 == config_hash(load_config(project))
    assert len(h1) == 64
    monkeypatch.setenv("APCA_API_KEY_ID", "k")
    assert config_hash(load_config(project)) == h1  # secrets never change the hash
    monkeypatch.setenv("WB_SIMULATOR__SEED", "4")
    assert config_hash(load_config(project)) != h1


def test_config_is_frozen(project: Path) -> None:
    cfg = load_config(project)
    with pytest.raises(ValidationError):
        cfg.simulator.seed = 5  # type: ignore[misc]


def test_strategy_lookup_suggests(project: Path) -> None:
    with pytest.raises(ConfigError, match="unknown strategy"):
        WorkbenchConfig().strategy("nope")


def test_project_root_found_from_subfolder(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = project / "notebooks"
    sub.mkdir()
    monkeypatch.chdir(sub)
    assert load_config().project_root == project.resolve()
