"""The monitoring assets read as data: alert rules, their unit tests, the scrape config and the Grafana
dashboard, with a small PromQL reader that finds the metric names, matchers and groupings they use.
Shared by tests/test_monitoring.py (against the catalogue) and tests/test_metrics_live.py (against a run)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from runtime.metrics import catalogue

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
PROMETHEUS = MONITORING / "prometheus.yml"
DASHBOARD = MONITORING / "grafana" / "alur-flow.json"

# ------------------------------------------------------------------------------------------ catalogue
# What the services export is declared once, in runtime/metrics.py (the services register from it);
# tests/test_metrics_live.py scrapes a whole run to hold them to it. Here it is only read.
# Labels that every scraped series also gets from prometheus.yml: job, instance and the target's service.
TARGET_LABELS = frozenset({"job", "instance", "service"})

_CATALOGUE = catalogue()
CATALOGUE_LABELS: dict[str, tuple[str, ...]] = {name: spec.labels for name, spec in _CATALOGUE.items()}
CATALOGUE: frozenset[str] = frozenset(CATALOGUE_LABELS)
HISTOGRAMS: frozenset[str] = frozenset(name for name, spec in _CATALOGUE.items() if spec.kind == "histogram")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels whose values are a closed set: a matcher with any other value is a typo that matches nothing.
LABEL_VALUES: dict[tuple[str, str], frozenset[str]] = {
    (name, label): values for name, spec in _CATALOGUE.items() for label, values in spec.values.items()
}
JOB = "alur"

# ------------------------------------------------------------------------------------------ PromQL
PROMQL_FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time",
    "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "deg", "delta", "deriv", "exp", "floor",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_sum", "histogram_stddev",
    "histogram_stdvar", "holt_winters", "double_exponential_smoothing", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time", "max_over_time",
    "min_over_time", "minute", "month", "pi", "predict_linear", "present_over_time", "quantile_over_time",
    "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_desc", "sort_by_label",
    "sort_by_label_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh",
    "time", "timestamp", "vector", "year", "start", "end",
})
PROMQL_AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
})
PROMQL_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "inf", "nan", "atan2",
})

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_TOKEN = re.compile(r"[0-9][0-9A-Za-z_.]*|[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"')
_LABEL_VALUES_QUERY = re.compile(r"^\s*label_values\(\s*(?:(?P<metric>[^,()]+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$")

# What Grafana puts in place of its variables, so that a dashboard query is plain PromQL.
GRAFANA_SUBSTITUTES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1d", "window": "1h",
                       "agency_type": ".*"}


def substitute_grafana_variables(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(0).strip("${}").split(":")[0]
        if name not in GRAFANA_SUBSTITUTES:
            raise ValueError(f"unknown Grafana variable {match.group(0)} in {expr!r}")
        return GRAFANA_SUBSTITUTES[name]

    return _GRAFANA_VARIABLE.sub(value, expr)


def raw_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects, as written (a histogram's `_bucket` kept).

    Strings, label matchers, ranges and grouping label lists are removed first; what is left is
    identifiers, numbers and operators. An identifier followed by `(` must be a function or an
    aggregation (else the expression has a typo); any other identifier that is not a keyword is a name.
    """
    text = _STRING.sub(" ", expr)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    text = _BRACES.sub(" ", text)
    while _BRACKETS.search(text):
        text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if token[0].isdigit() or token.lower() in PROMQL_KEYWORDS:
            continue
        if text[match.end():].lstrip().startswith("("):
            if token not in PROMQL_FUNCTIONS and token not in PROMQL_AGGREGATIONS:
                raise ValueError(f"{token}(...) is not a PromQL function or aggregation, in {expr!r}")
            continue
        names.add(token)
    return names


def base_name(name: str) -> str:
    """A histogram's series name (`x_bucket`, `x_sum`, `x_count`) to the histogram's name `x`."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


def selectors(expr: str) -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name as written, [(label, operator, value)]) for each `name{...}` in the expression."""
    for match in _SELECTOR.finditer(expr):
        yield match.group(1), [(m.group(1), m.group(2), m.group(3)) for m in _MATCHER.finditer(match.group(2))]


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for match in _GROUPING.finditer(_STRING.sub(" ", expr)):
        labels.update(label.strip() for label in match.group(2).split(",") if label.strip())
    return labels


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels(panels: Iterable[dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel, rows' collapsed panels included; rows themselves too."""
    for panel in dashboard()["panels"] if panels is None else panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            yield panel, target


def dashboard_variable_metrics() -> set[str]:
    """Metric names in the dashboard's query variables (`label_values(metric, label)`)."""
    names: set[str] = set()
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = _LABEL_VALUES_QUERY.match(query)
        assert match, f"variable {variable['name']}: only label_values(metric, label) queries are understood"
        if match.group("metric"):
            names |= raw_metric_names(match.group("metric"))
    return names


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every alert expression and every dashboard target, Grafana variables in place."""
    found = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    found += [(f"panel {panel['title']!r} {target['refId']}", target["expr"]) for panel, target in dashboard_targets()]
    return found


def metric_names_used() -> set[str]:
    """Every metric name used by the alert expressions and the dashboard (panel targets and variables),
    histograms by their base name."""
    names = dashboard_variable_metrics()
    for _, expr in expressions():
        names |= raw_metric_names(expr)
    return {base_name(name) for name in names}


# ------------------------------------------------------------------------------------------ parser
