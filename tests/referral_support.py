"""One referral request and the Kalsel escalation policy at a tiny scale, for the pure tests of notify's
state and of the metrics it derives from it. The `policy` fixture (that policy) is in conftest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from contracts.events import ReferralRequestedData, RuleReason
from contracts.vocab import AgencyType, Priority, Service
from domain.escalation_policy import EscalationPolicy

POLICY_FILE = Path(__file__).resolve().parents[1] / "deploy" / "kalsel" / "escalation.yaml"
T0 = datetime(2026, 11, 20, 8, 15, tzinfo=UTC)
MARKER = "PSEUDONYM-MUST-NOT-LEAK"


def request(policy: EscalationPolicy, **overrides: object) -> ReferralRequestedData:
    fields: dict[str, object] = {
        "referral_id": "ref-" + "1" * 20,
        "case_id": "case-" + "2" * 20,
        "agency": "dinsos-kalsel",
        "agency_type": AgencyType.SOCIAL_SERVICES,
        "service": Service.SHELTER,
        "priority": Priority.MEDIUM,
        "due": T0 + timedelta(hours=6) * 0.001,
        "reasons": [RuleReason(rule_id="shelter", description="needs shelter", legal_basis="UU 21/2007 Pasal 51")],
        "ruleset_version": "test",
        "case": {"victim": {"pseudonym": MARKER}, "narrative": MARKER},
        "requested_at": T0,
    }
    return ReferralRequestedData.model_validate({**fields, **overrides})
