"""deploy/monitoring/: Prometheus config, alert rules and their unit tests, the Grafana dashboard.

The promtool tests need Debian's `prometheus` package (it ships promtool) and skip without it. The rest
is pure Python: every metric the alerts and the dashboard use is in the catalogue of what the services
export (`runtime.metrics`, which they register from), with labels and label values they really give it,
and the files have the shape ops rely on. `metric_names_used()` is what tests/test_metrics_live.py checks
against a real run's `/metrics`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from runtime.metrics import SERVICES
from tests.monitoring_assets import (
    ALERTS,
    ALERTS_TEST,
    CATALOGUE,
    CATALOGUE_LABELS,
    HISTOGRAM_SUFFIXES,
    HISTOGRAMS,
    JOB,
    LABEL_VALUES,
    PROMETHEUS,
    REPO,
    TARGET_LABELS,
    alert_rules,
    base_name,
    dashboard,
    dashboard_panels,
    dashboard_targets,
    expressions,
    grouping_labels,
    load_yaml,
    metric_names_used,
    raw_metric_names,
    selectors,
    substitute_grafana_variables,
)


@pytest.mark.parametrize(("expr", "names"), [
    ("up == 0", {"up"}),
    ('max by (agency_type) (alur_referrals_overdue{agency_type=~"a|b"}) > 0', {"alur_referrals_overdue"}),
    ("histogram_quantile(0.99, sum by (service, le) (rate(alur_timer_lateness_seconds_bucket[10m]))) > 5",
     {"alur_timer_lateness_seconds_bucket"}),
    ("sum(rate(x_total[5m])) by (job) / on (job) group_left (service) y offset 15m", {"x_total", "y"}),
    ('label_replace(a, "dst", "$1", "src", "(.*)") unless b[1h:5m] and bool 1e3 < Inf', {"a", "b"}),
    ("rate(alur_reports_total[$__rate_interval]) * 3600", {"alur_reports_total"}),
    ("sum without (instance) (c) + d @ start()", {"c", "d"}),
])
def test_raw_metric_names(expr: str, names: set[str]) -> None:
    assert raw_metric_names(expr) == names


def test_an_unknown_function_is_a_typo() -> None:
    with pytest.raises(ValueError, match="histogram_quantil"):
        raw_metric_names("histogram_quantil(0.5, x_bucket)")


def test_base_name_strips_only_histogram_suffixes() -> None:
    assert base_name("alur_decision_seconds_bucket") == "alur_decision_seconds"
    assert base_name("alur_decision_seconds_count") == "alur_decision_seconds"
    assert base_name("alur_ready_count") == "alur_ready_count"  # not a histogram: stays, and fails the catalogue


# ------------------------------------------------------------------------------------------ catalogue
def test_every_metric_used_is_in_the_catalogue() -> None:
    unknown = metric_names_used() - CATALOGUE
    assert not unknown, f"not exported by any service (see CATALOGUE): {sorted(unknown)}"


def test_histograms_are_used_through_their_series() -> None:
    for where, expr in expressions():
        for name in raw_metric_names(expr):
            assert name not in HISTOGRAMS, f"{where}: histogram {name} has only _bucket/_sum/_count series"
            if name.endswith(HISTOGRAM_SUFFIXES):
                assert base_name(name) in HISTOGRAMS, f"{where}: {name} is not a histogram's series"


def test_matchers_use_labels_and_values_the_metric_has() -> None:
    for where, expr in expressions():
        for name, matchers in selectors(substitute_grafana_variables(expr)):
            metric = base_name(name)
            allowed = {*CATALOGUE_LABELS[metric], *TARGET_LABELS, *(("le",) if name.endswith("_bucket") else ())}
            for label, op, value in matchers:
                assert label in allowed, f"{where}: {name} has no label {label}"
                known = LABEL_VALUES.get((metric, label)) or (SERVICES if label == "service" else None)
                if known is None or op not in ("=", "=~"):
                    continue
                values = value.split("|") if op == "=~" else [value]
                if op == "=~" and not all(re.fullmatch(r"[a-z_]+", v) for v in values):
                    continue  # a real regex (e.g. ".*"): not a list of values
                assert set(values) <= known, f"{where}: {name}{{{label}}} never has {sorted(set(values) - known)}"
            if name == "up":
                assert ("job", "=", JOB) in matchers, f"{where}: up must be limited to job={JOB!r}"


def test_grouping_uses_labels_of_the_metrics_grouped() -> None:
    for where, expr in expressions():
        metrics = {base_name(name) for name in raw_metric_names(expr)}
        available = {"le", *TARGET_LABELS}.union(*(CATALOGUE_LABELS[m] for m in metrics if m in CATALOGUE_LABELS))
        missing = grouping_labels(expr) - available
        assert not missing, f"{where}: grouped by {sorted(missing)}, which none of {sorted(metrics)} has"


def test_no_label_is_an_id_or_victim_data() -> None:
    labels = set().union(*CATALOGUE_LABELS.values())
    for _, expr in expressions():
        labels |= grouping_labels(expr)
    assert not [label for label in labels if label.endswith("_id") or label in {"case", "referral", "victim", "nik", "name"}]


# ------------------------------------------------------------------------------------------ alerts
REQUIRED_ALERTS = {
    "AlurReferralsOverdue", "AlurReferralExpired", "AlurEscalationsRising", "AlurConsumerLagHigh",
    "AlurConsumerLagGrowing", "AlurDLQNotEmpty", "AlurWebhookFailing", "AlurServiceDown", "AlurServiceNotReady",
    "AlurTimersLate",
}


def test_alerts_have_severity_summary_description_and_runbook() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names are unique"
    assert REQUIRED_ALERTS <= set(names)
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{rule['alert'].lower()}"
        assert "for" in rule, f"{rule['alert']}: say how long, even 0m"
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in rules}
    # A victim waiting pages: overdue and expired referrals are critical.
    assert severity["AlurReferralsOverdue"] == severity["AlurReferralExpired"] == "critical"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [case for test in load_yaml(ALERTS_TEST)["tests"] for case in test.get("alert_rule_test", [])]
    for name in {rule["alert"] for rule in alert_rules()}:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name}: no test where it fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{name}: no test where it stays quiet"
        for case in mine:
            for alert in case.get("exp_alerts") or []:
                assert "severity" in alert["exp_labels"] and alert.get("exp_annotations"), f"{name}: check labels and annotations"


# ------------------------------------------------------------------------------------------ prometheus.yml
def test_prometheus_scrapes_the_four_services_and_loads_the_alerts() -> None:
    config = load_yaml(PROMETHEUS)
    assert config["rule_files"] == ["alerts.yml"]
    assert all((PROMETHEUS.parent / f).is_file() for f in config["rule_files"])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    assert job["metrics_path"] == "/metrics"
    assert job["honor_labels"] is True, "the services' own `service` label must not become exported_service"
    ports = {group["labels"]["service"]: {t.rsplit(":", 1)[1] for t in group["targets"]} for group in job["static_configs"]}
    assert ports == {"intake": {"8081"}, "routing": {"8082"}, "notify": {"8083"}, "board": {"8084"}}


# ------------------------------------------------------------------------------------------ dashboard
def test_dashboard_shape() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"] == "alur-flow"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in dashboard_panels():
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_dashboard_legends_name_labels_the_query_keeps() -> None:
    for panel, target in dashboard_targets():
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        missing = legend_labels - grouping_labels(target["expr"])
        assert not missing, f"panel {panel['title']!r}: legend uses {sorted(missing)}, which the query aggregates away"


def test_dashboard_shows_every_alur_metric() -> None:
    used = metric_names_used()
    assert not {name for name in CATALOGUE if name.startswith("alur_")} - used


# ------------------------------------------------------------------------------------------ promtool
def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool not found: install Debian's prometheus package (apt-get install prometheus) to run the alert tests")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_promtool_check_rules() -> None:
    promtool("check", "rules", str(ALERTS.relative_to(REPO)))


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(ALERTS_TEST.relative_to(REPO)))
    assert "SUCCESS" in result.stdout


def test_promtool_check_config() -> None:
    promtool("check", "config", str(PROMETHEUS.relative_to(REPO)))


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables substituted, as a recording rule that promtool must accept."""
    rules = [{"record": f"dashboard:panel_{panel['id']}_{target['refId']}",
              "expr": substitute_grafana_variables(target["expr"])} for panel, target in dashboard_targets()]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    promtool("check", "rules", str(path))
