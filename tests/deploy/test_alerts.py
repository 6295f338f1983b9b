"""Alert rules, the Grafana dashboard and the adapter rules: PromQL that parses
and only names metrics the service exports.

promtool is not on PyPI; the PromQL is parsed with promql-parser (the Rust
parser of the Prometheus grammar, via PyO3).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.deploy._util import (
    COUNTERS,
    DEPLOY,
    GAUGES,
    HISTOGRAMS,
    KNOWN_METRICS,
    PROMETHEUS_BUILTIN,
    missing_tool,
)

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "darl.json"
ADAPTER = DEPLOY / "prometheus-adapter" / "values.yaml"
FAILURE_TYPES = {"queue_full", "deadline_exceeded", "engine_error", "client_disconnected", "bad_request"}


def _parser():
    try:
        import promql_parser
    except ImportError:
        missing_tool("promql-parser is not installed")
    return promql_parser


def metric_names(expr: str) -> set[str]:
    """Parse ``expr`` (raises on a syntax error) and return every metric it selects."""
    pp = _parser()
    ast = pp.parse(expr)
    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, pp.MatrixSelector):
            node = node.vector_selector
        if isinstance(node, pp.VectorSelector):
            name = node.name
            if not name:
                name = next(m.value for m in node.matchers.matchers if m.name == "__name__")
            names.add(name)
            return
        for attr in ("expr", "lhs", "rhs", "param"):
            child = getattr(node, attr, None)
            if isinstance(child, pp.Expr):
                visit(child)
        for child in getattr(node, "args", None) or []:
            visit(child)

    visit(ast)
    return names


def label_values(expr: str, label: str) -> set[str]:
    return set(re.findall(rf'{label}\s*=\s*"([^"]*)"', expr))


def rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    assert set(doc) == {"groups"}
    out = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "labels"}, group.keys()
        assert group["name"] and group["rules"]
        out += group["rules"]
    return out


def test_parser_rejects_bad_promql():
    pp = _parser()
    with pytest.raises(Exception):  # noqa: B017 - the binding raises a plain ValueError/RuntimeError
        pp.parse("sum by (job) (rate(darl_requests_total[5m])")
    assert metric_names('histogram_quantile(0.9, sum by (le) (rate(x_bucket{a="b"}[5m]))) > y') == {"x_bucket", "y"}


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert") or r.get("record"))
def test_alert_rule(rule):
    assert "alert" in rule, "only alerting rules here"
    assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule.keys()
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
    names = metric_names(rule["expr"])
    assert names, "an alert without a metric"
    unknown = names - KNOWN_METRICS - PROMETHEUS_BUILTIN
    assert not unknown, f"{rule['alert']}: metrics the service does not export: {unknown}"
    if "for" in rule:
        _parser().parse_duration(rule["for"])
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert {"summary", "description"} <= set(rule["annotations"])
    assert label_values(rule["expr"], "type") <= FAILURE_TYPES


def test_required_alerts_exist():
    by_metric = {r["alert"]: metric_names(r["expr"]) for r in rules()}
    exprs = {r["alert"]: r["expr"] for r in rules()}
    # error rate: 5xx share of requests
    assert any('status=~"5.."' in e and "darl_requests_total" in by_metric[a] for a, e in exprs.items())
    # p99 latency
    assert any(
        "histogram_quantile(0.99" in e and "darl_request_duration_seconds_bucket" in by_metric[a]
        for a, e in exprs.items()
    )
    # queue saturation
    assert any({"darl_queue_depth_pairs", "darl_queue_capacity_pairs"} <= m for m in by_metric.values())


def test_prometheusrule_in_sync_with_rules_file():
    res = subprocess.run(
        [sys.executable, str(DEPLOY / "prometheus" / "sync_rules.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr


def _grafana_to_promql(expr: str) -> str:
    """Grafana's template variables replaced by values Prometheus would see."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?job\}?", ".+", expr)


def test_dashboard_queries():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"]), "duplicate panel ids"
    used: set[str] = set()
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["targets"], p["title"]
        for t in p["targets"]:
            names = metric_names(_grafana_to_promql(t["expr"]))
            unknown = names - KNOWN_METRICS
            assert not unknown, f"panel {p['title']!r}: unknown metrics {unknown}"
            used |= names
    # Every exported metric has a panel.
    for family in COUNTERS | GAUGES:
        assert family in used, f"{family} is on no panel"
    for h in HISTOGRAMS:
        assert any(n.startswith(h) for n in used), f"{h} is on no panel"


def test_prometheus_adapter_rules():
    values = yaml.safe_load(ADAPTER.read_text())
    for rule in values["rules"]["custom"]:
        series = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"]).group(1)
        assert series in KNOWN_METRICS
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="darl",pod=~"darl-.*"')
            .replace("<<.GroupBy>>", "pod")
        )
        assert metric_names(query) == {series}
    exposed = {r["name"]["as"] for r in values["rules"]["custom"]}
    assert "darl_queue_depth_pairs" in exposed  # the name the HPAs ask for


def test_known_metrics_are_what_the_service_exports():
    try:
        from service.metrics import Metrics
    except ImportError as e:  # the serve extra is not installed: skipped here, a failure in CI
        missing_tool(f"service.metrics not importable ({e})")
    exported: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            exported.add(family.name + "_total")
        elif family.type == "histogram":
            exported |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            exported.add(family.name)
    missing = KNOWN_METRICS - exported
    assert not missing, f"alerts/dashboards rely on metrics the service no longer exports: {missing}"
