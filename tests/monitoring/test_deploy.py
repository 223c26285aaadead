"""deploy/: the Grafana dashboard's panels query series the exporter really exposes, and every
exposed series is on the dashboard; the scrape config and provisioning files are well formed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from workbench.monitoring.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASH = DEPLOY / "grafana" / "dashboards" / "workbench.json"
NAME = re.compile(r"\b(wb_[a-z_]+)\b")


def panels() -> list[dict]:
    return [p for p in json.loads(DASH.read_text())["panels"] if p["type"] != "row"]


def test_dashboard_structure() -> None:
    d = json.loads(DASH.read_text())
    assert d["uid"] == "workbench-ops" and d["title"] and isinstance(d["schemaVersion"], int)
    assert {"from", "to"} <= set(d["time"]) and d["refresh"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert set(g) == {"x", "y", "w", "h"} and g["x"] >= 0 and g["x"] + g["w"] <= 24
    for p in panels():
        assert p["type"] in ("timeseries", "stat") and p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"] for t in p["targets"])


def test_panels_query_only_exposed_series_and_show_every_one() -> None:
    m = Metrics()
    exposed = m.names()
    used: set[str] = set()
    for p in panels():
        for t in p["targets"]:
            names = set(NAME.findall(t["expr"]))
            assert names, f"{p['title']}: no workbench series in {t['expr']!r}"
            assert names <= exposed, f"{p['title']}: {sorted(names - exposed)} not exposed"
            used |= names
    families = {fam.name for fam in m.registry.collect()}
    shown = {n for n in families if any(u == n or u.startswith(n + "_") for u in used)}
    assert shown == families, f"not on the dashboard: {sorted(families - shown)}"
    # the strategy variable reads a real label of a real series
    var = next(
        v for v in json.loads(DASH.read_text())["templating"]["list"] if v["name"] == "strategy"
    )
    assert var["definition"] == "label_values(wb_bars_total, strategy)"
    assert "strategy" in m.bars._labelnames


def test_scrape_config_and_provisioning() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert targets == ["127.0.0.1:9108", "127.0.0.1:9109"]
    assert all(job["metrics_path"] == "/metrics" for job in prom["scrape_configs"])
    ds = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    prov = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "workbench.yaml").read_text()
    )
    (provider,) = prov["providers"]
    assert (
        provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"
    )
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
