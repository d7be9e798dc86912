"""What the services export on `/metrics`: the one catalogue of metric names, labels and label values.

Every service builds its `ServiceMetrics` from `ALUR_METRICS` (the domain metrics) and adds FastStream's
`NatsPrometheusMiddleware` (`FASTSTREAM_METRICS`); `deploy/monitoring/` (alert rules, dashboard) may use
only names listed here, and a test scrapes a whole run to hold the services to it.

No label value is ever an id (case, referral, report, message) or victim data: the labels below take
values from closed sets (vocabulary codes, statuses, results) and a stream or consumer name; the
subject FastStream labels a handler with is reduced to its pattern (`subject_pattern`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from faststream.nats.prometheus import NatsPrometheusMiddleware
from faststream.nats.prometheus.provider import (
    NatsMetricsSettingsProvider,
    settings_provider_factory,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contracts.vocab import AgencyType, ReferralStatus
from domain.reasons import REJECTION_CODES
from runtime.logs import get_logger

Kind = Literal["counter", "gauge", "histogram"]
SERVICES = frozenset({"intake", "routing", "notify", "board"})
REPORT_OUTCOMES = frozenset({"registered", "updated", "rejected", "duplicate"})
REFERRAL_STATUSES = frozenset(s.value for s in ReferralStatus)
ESCALATION_ACTIONS = frozenset({"remind", "raise", "expire"})
WEBHOOK_RESULTS = frozenset({"delivered", "failed", "gone", "refused", "circuit_open"})
NOTICE_OUTCOMES = frozenset({"sent", "retry", "bounced", "given_up"})
REPAIR_KINDS = frozenset({"timer", "fact"})
AGENCY_TYPES = frozenset(t.value for t in AgencyType)
MAX_LEVEL = 6
"""Escalation levels above this share one label value (`6+`): a repeating ladder keeps the label set small."""
LEVELS = frozenset({*(str(n) for n in range(1, MAX_LEVEL)), f"{MAX_LEVEL}+"})
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
DECISION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
ACK_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0, 86400.0, 172800.0)
LATENESS_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
log = get_logger("runtime.metrics")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric: its kind, what it counts, its labels and the closed sets some labels take."""

    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    values: dict[str, frozenset[str]] = field(default_factory=dict)
    buckets: tuple[float, ...] = ()


ALUR_METRICS: dict[str, MetricSpec] = {
    "alur_ready": MetricSpec("gauge", "1 while this instance is ready (GET /readyz answers 200), else 0"),
    "alur_reports_total": MetricSpec(
        "counter", "Reports intake decided, by outcome", ("outcome",), {"outcome": REPORT_OUTCOMES}),
    "alur_rejections_total": MetricSpec(
        "counter", "Reasons reports were rejected for, by code (the field at fault)", ("code",),
        {"code": REJECTION_CODES}),
    "alur_referrals_total": MetricSpec(
        "counter", "Referral facts stated, by agency type and status", ("agency_type", "status"),
        {"agency_type": AGENCY_TYPES, "status": REFERRAL_STATUSES}),
    "alur_escalations_total": MetricSpec(
        "counter", "Escalation steps taken, by agency type, level and action", ("agency_type", "level", "action"),
        {"agency_type": AGENCY_TYPES, "level": LEVELS, "action": ESCALATION_ACTIONS}),
    "alur_webhook_attempts_total": MetricSpec(
        "counter", "Webhook delivery attempts, by agency type and result", ("agency_type", "result"),
        {"agency_type": AGENCY_TYPES, "result": WEBHOOK_RESULTS}),
    "alur_email_notices_total": MetricSpec(
        "counter", "Email notice attempts, by the recipient's agency type and outcome", ("agency_type", "outcome"),
        {"agency_type": AGENCY_TYPES, "outcome": NOTICE_OUTCOMES}),
    "alur_report_to_referral_seconds": MetricSpec(
        "histogram", "From a report stored in REPORTS to a referral requested for it", buckets=LATENCY_BUCKETS),
    "alur_decision_seconds": MetricSpec(
        "histogram", "Time routing spends deciding one case (rules, registry, views)", buckets=DECISION_BUCKETS),
    "alur_time_to_acknowledge_seconds": MetricSpec(
        "histogram", "From a referral requested to the agency's first answer", ("agency_type",),
        {"agency_type": AGENCY_TYPES}, buckets=ACK_BUCKETS),
    "alur_referrals_open": MetricSpec(
        "gauge", "Referrals not yet terminal, by agency type (from notify's state)", ("agency_type",),
        {"agency_type": AGENCY_TYPES}),
    "alur_referrals_overdue": MetricSpec(
        "gauge", "Open referrals past a running deadline, by agency type (from notify's state)", ("agency_type",),
        {"agency_type": AGENCY_TYPES}),
    "alur_timer_lateness_seconds": MetricSpec(
        "histogram", "How late an escalation timer fired after its planned time", buckets=LATENESS_BUCKETS),
    "alur_auditor_repairs_total": MetricSpec(
        "counter", "Lost timers and facts the auditor repaired, by kind", ("kind",), {"kind": REPAIR_KINDS}),
    "alur_dlq_messages": MetricSpec("gauge", "Messages in the DLQ stream"),
    "alur_consumer_pending": MetricSpec(
        "gauge", "Messages a durable consumer of this service has yet to deliver", ("stream", "consumer")),
    "alur_consumer_ack_pending": MetricSpec(
        "gauge", "Messages a durable consumer of this service delivered and awaits acks for", ("stream", "consumer")),
}
"""The domain metrics. Each also has the label `service` (the service's name)."""

SERVICE_LABEL = "service"
FASTSTREAM_PREFIX = "faststream"
_RECEIVED = ("app_name", "broker", "handler")
_PUBLISHED = ("app_name", "broker", "destination")
FASTSTREAM_METRICS: dict[str, MetricSpec] = {
    "faststream_received_messages_total": MetricSpec("counter", "Messages received", _RECEIVED),
    "faststream_received_messages_size_bytes": MetricSpec("histogram", "Sizes of messages received", _RECEIVED),
    "faststream_received_messages_in_process": MetricSpec("gauge", "Messages being handled", _RECEIVED),
    "faststream_received_processed_messages_total": MetricSpec(
        "counter", "Messages handled, by status", (*_RECEIVED, "status"),
        {"status": frozenset({"acked", "nacked", "rejected", "skipped", "error"})}),
    "faststream_received_processed_messages_duration_seconds": MetricSpec(
        "histogram", "Time handling a message", _RECEIVED),
    "faststream_received_processed_messages_exceptions_total": MetricSpec(
        "counter", "Exceptions out of handlers", (*_RECEIVED, "exception_type")),
    "faststream_published_messages_total": MetricSpec(
        "counter", "Messages published through the broker", (*_PUBLISHED, "status"),
        {"status": frozenset({"success", "error"})}),
    "faststream_published_messages_duration_seconds": MetricSpec(
        "histogram", "Time publishing a message through the broker", _PUBLISHED),
    "faststream_published_messages_exceptions_total": MetricSpec(
        "counter", "Exceptions publishing through the broker", (*_PUBLISHED, "exception_type")),
}
"""What FastStream 0.7.8's `NatsPrometheusMiddleware` exports (faststream/prometheus/container.py). The
services publish facts with nats-py's JetStream client, not FastStream publishers: the `published_*`
metrics stay empty (their families are exported, with no series)."""

SCRAPE_METRICS: dict[str, MetricSpec] = {
    "up": MetricSpec("gauge", "Prometheus's own: 1 when the target was scraped", ("job", "instance")),
}
"""Series Prometheus makes itself for every target."""


def catalogue() -> dict[str, MetricSpec]:
    """Every metric name the rules and the dashboard may use, with its labels (`service` included for ours)."""
    ours = {name: MetricSpec(s.kind, s.help, (SERVICE_LABEL, *s.labels), s.values, s.buckets)
            for name, s in ALUR_METRICS.items()}
    return {**SCRAPE_METRICS, **FASTSTREAM_METRICS, **ours}


def level_label(level: int) -> str:
    """An escalation level as a label value, from the bounded set `LEVELS`."""
    return str(level) if level < MAX_LEVEL else f"{MAX_LEVEL}+"


def subject_pattern(subject: str) -> str:
    """A subject as a label value: its kind and verb kept, every key (agency, regency, id, sequence) a `*`.

    `alur.timer.fired.<referral id>.ack` → `alur.timer.fired.*.*`; a subject outside Alur's own is kept
    as it is (JetStream advisories name only a stream and a consumer).
    """
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != "alur":
        return subject
    fixed = 2 if parts[1] in ("report", "response", "dlq") else 3
    return ".".join(parts[:fixed] + ["*"] * (len(parts) - fixed))


class _PatternProvider(NatsMetricsSettingsProvider):
    """FastStream's NATS metrics settings, with the handler named by the subject's pattern, not the subject."""

    def get_consume_attrs_from_message(self, msg):  # type: ignore[no-untyped-def]
        attrs = super().get_consume_attrs_from_message(msg)
        return {**attrs, "destination_name": subject_pattern(attrs["destination_name"])}

    def get_publish_destination_name_from_cmd(self, cmd):  # type: ignore[no-untyped-def]
        return subject_pattern(super().get_publish_destination_name_from_cmd(cmd))


def _pattern_provider(msg):  # type: ignore[no-untyped-def]
    provider = settings_provider_factory(msg)
    return _PatternProvider() if isinstance(provider, NatsMetricsSettingsProvider) else provider


def faststream_middleware(service: str, registry: CollectorRegistry) -> NatsPrometheusMiddleware:
    """FastStream's received/processed/duration/exception metrics for one service, into `registry`."""
    middleware = NatsPrometheusMiddleware(registry=registry, app_name=service, metrics_prefix=FASTSTREAM_PREFIX)
    middleware._settings_provider_factory = _pattern_provider  # noqa: SLF001 - no public hook in 0.7.8
    return middleware


class ServiceMetrics:
    """One service's domain metrics, in its own registry; each record method is one thing that happened."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry()
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        for name, spec in ALUR_METRICS.items():
            labels = [SERVICE_LABEL, *spec.labels]
            if spec.kind == "counter":
                metric: Counter | Gauge | Histogram = Counter(
                    name.removesuffix("_total"), spec.help, labels, registry=self.registry)
            elif spec.kind == "gauge":
                metric = Gauge(name, spec.help, labels, registry=self.registry)
            else:
                metric = Histogram(name, spec.help, labels, buckets=spec.buckets, registry=self.registry)
            self._metrics[name] = metric

    def _of(self, name: str, **labels: str) -> Counter | Gauge | Histogram:
        spec = ALUR_METRICS[name]
        for label, allowed in spec.values.items():
            if labels[label] not in allowed:
                raise ValueError(f"{name}: {label}={labels[label]!r} is not one of its values")
        return self._metrics[name].labels(self.service, *(labels[label] for label in spec.labels))

    def _record(self, name: str, how: str, value: float, labels: dict[str, str]) -> None:
        """Record one value; a label value outside its set is logged and dropped, never raised into the
        handler that is recording it (a metric must not send a message to the DLQ)."""
        try:
            metric = self._of(name, **labels)
        except (KeyError, ValueError) as exc:
            log.error("metric not recorded", metric=name, error=str(exc)[:200])
            return
        getattr(metric, how)(value)

    def _count(self, name: str, amount: float = 1, **labels: str) -> None:
        self._record(name, "inc", amount, labels)

    def _observe(self, name: str, value: float, **labels: str) -> None:
        self._record(name, "observe", max(0.0, value), labels)

    def _set(self, name: str, value: float, **labels: str) -> None:
        self._record(name, "set", value, labels)

    def declare(self, name: str, combinations: Iterable[dict[str, str]]) -> None:
        """Create these label combinations of a counter at 0, so its first event is an increase."""
        for labels in combinations:
            self._of(name, **labels)

    # -------------------------------------------------------------- what happened
    def report(self, outcome: str) -> None:
        self._count("alur_reports_total", outcome=outcome)

    def rejection(self, codes: Iterable[str]) -> None:
        for code in codes:
            self._count("alur_rejections_total", code=code)

    def referral(self, agency_type: str, status: str) -> None:
        self._count("alur_referrals_total", agency_type=agency_type, status=status)

    def escalation(self, agency_type: str, level: int, action: str) -> None:
        self._count("alur_escalations_total", agency_type=agency_type, level=level_label(level), action=action)

    def webhook_attempt(self, agency_type: str, result: str) -> None:
        self._count("alur_webhook_attempts_total", agency_type=agency_type, result=result)

    def email_notice(self, agency_type: str, outcome: str) -> None:
        self._count("alur_email_notices_total", agency_type=agency_type, outcome=outcome)

    def report_to_referral(self, seconds: float) -> None:
        self._observe("alur_report_to_referral_seconds", seconds)

    def decision(self, seconds: float) -> None:
        self._observe("alur_decision_seconds", seconds)

    def acknowledged(self, agency_type: str, seconds: float) -> None:
        self._observe("alur_time_to_acknowledge_seconds", seconds, agency_type=agency_type)

    def timer_late(self, seconds: float) -> None:
        self._observe("alur_timer_lateness_seconds", seconds)

    def repaired(self, kind: str, amount: int = 1) -> None:
        if amount:
            self._count("alur_auditor_repairs_total", amount, kind=kind)

    # -------------------------------------------------------------- what stands now (set at each scrape)
    def ready(self, ready: bool) -> None:
        self._set("alur_ready", 1.0 if ready else 0.0)

    def dlq_messages(self, count: int) -> None:
        self._set("alur_dlq_messages", count)

    def consumer(self, stream: str, consumer: str, *, pending: int, ack_pending: int) -> None:
        self._set("alur_consumer_pending", pending, stream=stream, consumer=consumer)
        self._set("alur_consumer_ack_pending", ack_pending, stream=stream, consumer=consumer)

    def referrals_now(self, open_by_type: dict[str, int], overdue_by_type: dict[str, int]) -> None:
        """The open and overdue gauges, every agency type given (0 where none): a type that drops to none
        reads 0, not its last value."""
        for agency_type in sorted(AGENCY_TYPES):
            self._set("alur_referrals_open", open_by_type.get(agency_type, 0), agency_type=agency_type)
            self._set("alur_referrals_overdue", overdue_by_type.get(agency_type, 0), agency_type=agency_type)
