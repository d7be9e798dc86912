"""Notify: delivers every referral, tracks it to an outcome, and escalates when an agency is silent.

The decisions are pure (`domain.lifecycle`, `state`, `escalation`, `webhook`, `notices`); the edges are `store`
(state in KV, facts on REFERRALS, timers), `delivery`, `mailing` (email notices over `smtp`), `responses` and
`timers`. `create_app` wires them into one
service. Run alone: `alur serve notify`, or `faststream run services.notify.app:create_app --factory`.
"""

from __future__ import annotations

from contracts import subjects
from contracts.catalog import (
    REFERRAL_ESCALATED,
    REFERRAL_OUTCOME,
    REFERRAL_REMINDED,
    REFERRAL_RESPONSE,
    RESPONSE_REFUSED,
    STATUS_EVENTS,
    referral_status_type,
)
from domain.escalation_policy import EscalationPolicy, load_policy
from runtime.app import ServiceApp, ServiceAsgi
from runtime.metrics import (
    AGENCY_TYPES,
    NOTICE_OUTCOMES,
    REPAIR_KINDS,
    WEBHOOK_RESULTS,
    level_label,
)
from runtime.profile import profile_dir
from runtime.settings import Settings
from services.notify.context import NotifyContext
from services.notify.delivery import Delivery
from services.notify.gauges import ReferralGauges, Written
from services.notify.mailing import EmailNotices
from services.notify.responses import Responses
from services.notify.store import ReferralStore
from services.notify.timers import Timers


def _states(app: ServiceApp) -> None:
    """What notify publishes, for the AsyncAPI document."""
    agency = subjects.AGENCY_PARAM
    app.states(subjects.response(agency), REFERRAL_RESPONSE, "An answer POSTed to "
               "`/v1/referrals/{referral_id}/responses`, stored under the token's agency.")
    for status in STATUS_EVENTS:
        app.states(subjects.referral(status.value, agency), referral_status_type(status),
                   f"The referral is now `{status.value}`: recorded by notify after checking the transition "
                   "and its sender.")
    app.states(subjects.referral("reminded", agency), REFERRAL_REMINDED, "A reminder: a deadline of the "
               "referral passed (escalation level 1).")
    app.states(subjects.referral("escalated", agency), REFERRAL_ESCALATED, "An escalation: raised to the "
               "coordinator, or expired and rerouted. The secretariat's consumer carries every agency's.")
    app.states(subjects.referral("response_refused", agency), RESPONSE_REFUSED, "The agency's answer was not "
               "recorded, and why (`code`, `reason`).")
    app.states(subjects.referral("outcome", agency), REFERRAL_OUTCOME, "A referral's outcome, for the "
               "secretariat.")


def create_app(settings: Settings | None = None) -> ServiceAsgi:
    """The notify service, built and wired: the profile's escalation policy is validated first."""
    app = ServiceApp("notify", settings)
    policy = load_policy(profile_dir(app.settings) / "escalation.yaml", scale=app.settings.sla_scale)
    ctx = NotifyContext(app, policy)
    written = Written()
    store = ReferralStore(ctx, written)
    parts = (Delivery(ctx, store), EmailNotices(ctx, store), Responses(ctx, store), Timers(ctx, store),
             ReferralGauges(ctx, written))
    for part in parts:
        part.register()
    declare_counters(app, policy)
    _states(app)
    return app.asgi()


def declare_counters(app: ServiceApp, policy: EscalationPolicy) -> None:
    """Notify's counters the alerts watch with `increase()`, created at 0 for every agency type: the
    escalation steps its policy can take (a delivery raise is level 2), webhook results, email notice outcomes,
    auditor repairs."""
    ladders = [policy.ack.ladder, policy.decision.ladder, policy.update.ladder,
               *(clock.ladder for clock in policy.statutory),
               *([policy.default_statutory_ladder] if policy.default_statutory_ladder else [])]
    steps = {(level_label(n), level.action) for ladder in ladders for n, level in enumerate(ladder.levels, 1)}
    steps |= {(level_label(2), "raise")}
    types = sorted(AGENCY_TYPES)
    app.metrics.declare("alur_escalations_total", ({"agency_type": t, "level": lv, "action": a}
                                                   for t in types for lv, a in sorted(steps)))
    app.metrics.declare("alur_webhook_attempts_total", ({"agency_type": t, "result": r}
                                                        for t in types for r in sorted(WEBHOOK_RESULTS)))
    app.metrics.declare("alur_email_notices_total", ({"agency_type": t, "outcome": o}
                                                     for t in types for o in sorted(NOTICE_OUTCOMES)))
    app.metrics.declare("alur_auditor_repairs_total", ({"kind": k} for k in sorted(REPAIR_KINDS)))
