"""The Grafana dashboard in k8s/grafana/ is valid JSON and queries only what server/metrics.py exports: every
metric name, every label in a selector or a `by (...)` clause, histogram quantiles over `_bucket` with `le`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from kerve.server.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "k8s" / "grafana" / "kerve-dashboard.json"
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "container", "endpoint"}  # added by scraping
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"), "gauge": ("",)}


def exported_series() -> dict[str, tuple[str, frozenset[str]]]:
    """Every series name the server exports -> (metric type, label names)."""
    series: dict[str, tuple[str, frozenset[str]]] = {}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        kind = metric._type
        labels = frozenset(metric._labelnames)
        for suffix in SUFFIXES[kind]:
            extra = {"le"} if suffix == "_bucket" else set()
            series[metric._name + suffix] = (kind, labels | extra)
    return series


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in board["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def expressions(board: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in all_panels(board) for t in p.get("targets", []) if "expr" in t]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def test_dashboard_is_valid_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    ids = [p["id"] for p in all_panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in all_panels(board):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    names = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "model", "instance"} <= names


def problems(expr: str, series: dict[str, tuple[str, frozenset[str]]]) -> list[str]:
    """What is wrong with one PromQL expression against the exported series (empty: nothing)."""
    found: list[str] = []
    if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
        found.append("unbalanced brackets")
    text = strip_strings(expr)
    names = {n for n in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", text) if n.startswith("kerve_")}
    if not names:
        found.append("no kerve metric")
    found += [f"unknown metric {n}" for n in sorted(names - set(series))]
    known = names & set(series)
    for name, matchers in re.findall(r"\b(kerve_[a-zA-Z0-9_:]*)\s*\{([^}]*)\}", text):
        allowed = (series[name][1] if name in series else frozenset()) | TARGET_LABELS
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            if label not in allowed:
                found.append(f"{name} has no label {label!r}")
    labels_here = set().union(*(series[n][1] for n in known)) | TARGET_LABELS
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text):
        labels = {x.strip() for x in clause.split(",")} - {""}
        found += [f"by ({label})" for label in sorted(labels - labels_here)]
    for argument in re.findall(r"histogram_quantile\(\s*[0-9.]+\s*,(.*)", text):
        if "_bucket" not in argument or not re.search(r"by\s*\([^)]*\ble\b", argument):
            found.append("histogram_quantile needs rate(..._bucket) summed by le")
    variables = set(re.findall(r"\$\{?(\w+)", expr))
    found += [f"unknown variable ${v}" for v in sorted(variables - {"model", "instance", "__rate_interval", "__range"})]
    return found


def test_every_expression_uses_exported_metrics_and_labels() -> None:
    series = exported_series()
    for expr in expressions(dashboard()):
        assert problems(expr, series) == [], expr


def test_every_family_is_on_the_dashboard() -> None:
    text = " ".join(expressions(dashboard()))
    for family in (
        "kerve_requests_total",
        "kerve_request_duration_seconds_bucket",
        "kerve_queue_duration_seconds_bucket",
        "kerve_compute_duration_seconds_bucket",
        "kerve_batch_size_bucket",
        "kerve_queue_depth",
        "kerve_inflight_requests",
        "kerve_model_state",
        "kerve_model_load_duration_seconds",
        "kerve_model_reload_events_total",
        "kerve_response_cache_lookups_total",
        "kerve_response_cache_bytes",
        "kerve_response_cache_evictions_total",
    ):
        assert re.search(rf"\b{family}\b", text), f"{family} is not on the dashboard"


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('rate(kerve_requests_count{model="a"}[5m])', "unknown metric kerve_requests_count"),
        ("kerve_queue_depth_total", "unknown metric kerve_queue_depth_total"),
        ('sum(kerve_queue_depth{version="1"})', "kerve_queue_depth has no label 'version'"),
        ("sum by (code) (kerve_inflight_requests)", "by (code)"),
        ("histogram_quantile(0.9, sum by (model) (rate(kerve_batch_size_bucket[5m])))", "histogram_quantile"),
        ("histogram_quantile(0.9, rate(kerve_batch_size_sum[5m]))", "histogram_quantile"),
        ('sum(kerve_inflight_requests{model=~"$modle"})', "unknown variable $modle"),
        ("up", "no kerve metric"),
    ],
)
def test_the_check_catches_mistakes(expr: str, problem: str) -> None:
    assert any(problem in p for p in problems(expr, exported_series())), problems(expr, exported_series())
