"""The Grafana dashboard in the chart queries only metrics the gateway exposes."""

import json
import re
from pathlib import Path

from broker_gateway.metrics import Metrics

DASHBOARD = (
    Path(__file__).parents[2] / "helm" / "broker-gateway" / "dashboards" / "broker-gateway.json"
)


def _exposed() -> set[str]:
    """Every sample name the registry can expose (counters' _total, histograms' parts)."""
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_count", "_sum")}
    return names


def test_every_dashboard_query_names_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(queries) >= 10
    named = {name for q in queries for name in re.findall(r"\bbroker_gateway_[a-z_]+", q)}
    assert named - _exposed() == set()
    assert len(named) >= 12  # most of what the gateway exposes is on it


def test_every_metric_has_the_prefix() -> None:
    assert all(name.startswith("broker_gateway_") for name in _exposed())
