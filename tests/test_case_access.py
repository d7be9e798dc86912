"""Who may amend a case (issue 10.1, docs/case-access.md): the reporter, agencies that hold or held a referral
of it, and the secretariat; nobody else, and no disabled or unknown agency."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.events import Case
from contracts.records import Agency, CaseReferrals
from domain.case_access import may_amend
from domain.registry import AgencyRegistry
from runtime.profile import load_registry_file
from services.routing.pack_tests import build_case
from tests.conftest import REFERENCE_REPORT

REGISTRY = load_registry_file().with_agency(
    Agency(id="polres-disabled", type="police", regions=["6371"], enabled=False)  # type: ignore[arg-type]
)
CASE: Case = build_case(REFERENCE_REPORT["data"], reporter="bp3mi-kalsel")


def referral(agency: str, agency_type: str, service: str, n: int) -> dict[str, Any]:
    return {"referral_id": f"ref-{n:020x}", "case_id": CASE.case_id, "agency": agency, "agency_type": agency_type,
            "service": service, "priority": "high", "due": datetime(2026, 11, 20, tzinfo=UTC).isoformat(),
            "reasons": [{"rule_id": "r", "description": "d", "legal_basis": "b"}]}


RECORD = CaseReferrals.model_validate({
    "case_id": CASE.case_id,
    "referrals": {r["referral_id"]: r for r in [
        referral("polresta-banjarmasin", "police", "investigation", 1),
        referral("dinkes-banjarmasin", "health", "medical", 2),  # rejected it later: it held the case
        referral("polres-disabled", "police", "investigation", 3),
    ]},
})

ACCESS = [
    pytest.param("bp3mi-kalsel", RECORD, True, id="the-reporter"),
    pytest.param("bp3mi-kalsel", None, True, id="the-reporter-before-routing"),
    pytest.param("polresta-banjarmasin", RECORD, True, id="holds-a-referral"),
    pytest.param("dinkes-banjarmasin", RECORD, True, id="held-a-referral"),
    pytest.param("gt-kalsel", None, True, id="the-secretariat"),
    pytest.param("polda-kalsel", RECORD, False, id="police-without-a-referral"),
    pytest.param("polresta-banjarmasin", None, False, id="no-record-yet"),
    pytest.param("disdik-kalsel", RECORD, False, id="another-agency"),
    pytest.param("polres-disabled", RECORD, False, id="a-disabled-agency"),
    pytest.param("ngo-unknown", RECORD, False, id="not-in-the-registry"),
]


@pytest.mark.parametrize(("agency", "record", "allowed"), ACCESS)
def test_who_may_amend_a_case(agency: str, record: CaseReferrals | None, allowed: bool) -> None:
    assert may_amend(agency, CASE, record, REGISTRY) is allowed


def test_a_disabled_reporter_or_secretariat_may_not() -> None:
    registry = AgencyRegistry.of(
        a.model_copy(update={"enabled": False}) if a.id in ("bp3mi-kalsel", "gt-kalsel") else a
        for a in REGISTRY.agencies.values()
    )
    assert not may_amend("bp3mi-kalsel", CASE, RECORD, registry)
    assert not may_amend("gt-kalsel", CASE, RECORD, registry)
