"""DOMAIN.md's table, consent and mandated overrides, merging, follow-ups and the reference report."""

from __future__ import annotations

import re
from typing import Any

import pytest

from contracts.events import ReferralRequestedData
from domain.cases import case_id_for
from services.routing.decide import decide
from services.routing.pack_tests import EXPLAIN_CASE_KEY, build_case
from services.routing.plan import referral_id
from tests.routing_cases import (
    ADULT_MALE,
    NOW,
    REFERENCE_DATA,
    REFERENCE_EVENT,
    case_of,
    decision_for,
    merged,
    pack,
    referral,
    referred,
    registry,
    views,
    withheld,
)

ROWS: list[tuple[str, dict[str, Any], set[tuple[str, str]], set[tuple[str, str]]]] = [
    # (row, changes to an adult man with a case manager, must be referred, must not be referred)
    ("child -> uptd_ppa", {"victim": {"age": 12}}, {("uptd_ppa", "case_management")}, set()),
    ("female -> uptd_ppa", {"victim": {"sex": "female"}}, {("uptd_ppa", "case_management")}, set()),
    ("adult male -> no uptd_ppa", {}, set(), {("uptd_ppa", "case_management")}),
    ("always -> police", {}, {("police", "investigation")}, set()),
    ("medical -> health", {"needs": ["medical"]}, {("health", "medical")}, set()),
    ("psychological -> health", {"needs": ["psychological"]}, {("health", "psychological")}, set()),
    ("injury -> health", {"injured": True}, {("health", "medical")}, set()),
    ("shelter -> social", {"needs": ["shelter"]}, {("social_services", "shelter")}, set()),
    ("rehabilitation -> social", {"needs": ["social_rehabilitation"]}, {("social_services", "social_rehabilitation")}, set()),
    ("reintegration -> social", {"needs": ["reintegration"]}, {("social_services", "reintegration")}, set()),
    ("adult male, no case manager -> social", {"has_case_manager": False}, {("social_services", "case_management")}, set()),
    ("adult male with case manager -> no social", {}, set(), {("social_services", "case_management")}),
    ("pmi_procedural -> bp3mi", {"victim": {"migration_profile": "pmi_procedural"}},
     {("migrant_worker_protection", "migrant_worker_protection")}, set()),
    ("pmi_non_procedural -> bp3mi", {"victim": {"migration_profile": "pmi_non_procedural"}},
     {("migrant_worker_protection", "migrant_worker_protection")}, set()),
    ("cpmi -> bp3mi", {"victim": {"migration_profile": "cpmi"}},
     {("migrant_worker_protection", "migrant_worker_protection")}, set()),
    ("returnee -> bp3mi", {"victim": {"migration_profile": "returnee_deportee"}},
     {("migrant_worker_protection", "migrant_worker_protection")}, set()),
    ("abroad -> bp3mi", {"location": {"exploitation_location": "abroad", "country": "MY"}},
     {("migrant_worker_protection", "migrant_worker_protection")}, set()),
    ("domestic -> no bp3mi", {}, set(), {("migrant_worker_protection", "migrant_worker_protection")}),
    ("wna -> immigration", {"victim": {"nationality": "wna", "migration_profile": "foreign_in_indonesia"}},
     {("immigration", "travel_documents")}, set()),
    ("stateless -> immigration", {"victim": {"nationality": "stateless_unknown"}}, {("immigration", "travel_documents")}, set()),
    ("repatriation abroad -> immigration", {"needs": ["repatriation"], "location": {"exploitation_location": "abroad"}},
     {("immigration", "travel_documents"), ("migrant_worker_protection", "repatriation")}, set()),
    ("wni at home -> no immigration", {"needs": ["repatriation"], "location": {"exploitation_location": "other_province"}},
     {("social_services", "repatriation")}, {("immigration", "travel_documents")}),
    ("forced labour inside -> labour", {"exploitation": ["forced_labour"]}, {("labour", "labour_inspection")}, set()),
    ("debt bondage inside -> labour", {"exploitation": ["debt_bondage"], "location": {"exploitation_location": "other_province"}},
     {("labour", "labour_inspection")}, set()),
    ("forced labour abroad -> no labour", {"exploitation": ["forced_labour"], "location": {"exploitation_location": "abroad"}},
     set(), {("labour", "labour_inspection")}),
    ("child needs education -> education", {"victim": {"age": 13}, "needs": ["education"]}, {("education", "education")}, set()),
    ("child forced marriage -> education", {"victim": {"age": 15}, "exploitation": ["forced_marriage"]},
     {("education", "education")}, set()),
    ("adult needs education -> no education", {"needs": ["education"]}, set(), {("education", "education")}),
    ("protection -> lpsk", {"needs": ["protection"]}, {("witness_victim_protection", "protection")}, set()),
    ("restitution -> prosecutor + lpsk", {"needs": ["restitution"]},
     {("prosecutor", "restitution_claim"), ("witness_victim_protection", "restitution_calculation")}, set()),
    ("legal aid -> legal_aid", {"needs": ["legal_aid"]}, {("legal_aid", "legal_aid")}, set()),
    ("documents -> civil registry", {"needs": ["documents"]}, {("civil_registry", "documents")}, set()),
]


@pytest.mark.parametrize(("row", "changes", "present", "absent"), ROWS, ids=[r[0] for r in ROWS])
def test_domain_table_row(row: str, changes: dict[str, Any], present: set, absent: set) -> None:
    decision = decision_for(merged(ADULT_MALE, **changes))
    assert present <= referred(decision), row
    assert not (absent & referred(decision)), row


def test_child_gets_uptd_ppa_at_high_priority_even_at_low_risk() -> None:
    decision = decision_for(merged(ADULT_MALE, victim={"age": 10}, risk="low"))
    assert referral(decision, "uptd_ppa", "case_management").priority == "high"
    assert referral(decision, "police", "investigation").priority == "high"


def test_statutory_clocks_are_carried_separately_from_the_acknowledgement_deadline() -> None:
    decision = decision_for(merged(ADULT_MALE, victim={"sex": "female"}, needs=["social_rehabilitation", "protection"],
                                   exploitation=["sexual_exploitation"], risk="low"))
    rehab = referral(decision, "social_services", "social_rehabilitation")
    assert (rehab.sla_hours, rehab.statutory_clock) == (168, "rehab_request_7d")
    assert (rehab.due - NOW).total_seconds() == 24 * 3600
    lpsk = referral(decision, "witness_victim_protection", "protection")
    assert lpsk.statutory_clock == "lpsk_decision_7d"
    police = referral(decision, "police", "investigation")
    assert (police.sla_hours, police.statutory_clock, police.priority) == (72, "tpks_report_to_police_72h", "high")
    assert (police.due - NOW).total_seconds() == 3600
    assert referral(decision, "police", "protection").sla_hours == 24


def test_sla_scale_shrinks_the_acknowledgement_deadline() -> None:
    decision = decision_for(ADULT_MALE, sla_scale=0.001)
    assert (referral(decision, "police", "investigation").due - NOW).total_seconds() == pytest.approx(6 * 3.6)


# ---------------------------------------------------------------- consent


def test_no_consent_withholds_with_reason_for_an_adult() -> None:
    decision = decision_for(merged(ADULT_MALE, needs=["medical"], consent={"share_with": "none"}))
    assert decision.referrals == []
    assert withheld(decision) == {("police", "investigation"), ("health", "medical")}
    police = next(w for w in decision.withheld if w.agency_type == "police")
    assert "consent does not cover police" in police.reason and police.rule_ids == ["police-investigation"]


def test_child_without_consent_is_mandated_to_uptd_ppa_and_police_only() -> None:
    decision = decision_for(merged(ADULT_MALE, victim={"age": 14, "sex": "female"}, needs=["medical"],
                                   consent={"share_with": "none"}))
    assert referred(decision) == {("uptd_ppa", "case_management"), ("police", "investigation")}
    for made in decision.referrals:
        assert made.overridden
        assert all(r.override and "consent overridden" in r.legal_basis for r in made.reasons)
        assert {r.rule_id for r in made.reasons} <= {"uptd-ppa-child", "police-child"}
    assert withheld(decision) == {("health", "medical")}


def test_consent_list_covers_only_listed_types() -> None:
    decision = decision_for(merged(ADULT_MALE, needs=["medical", "shelter"],
                                   consent={"share_with": ["health"]}))
    assert referred(decision) == {("health", "medical")}
    assert withheld(decision) == {("police", "investigation"), ("social_services", "shelter")}


def test_consent_given_means_no_override_recorded() -> None:
    decision = decision_for(merged(ADULT_MALE, victim={"age": 14}))
    assert not any(r.override for made in decision.referrals for r in made.reasons)


# ---------------------------------------------------------------- merging


def test_rules_naming_the_same_type_and_service_merge_into_one_referral() -> None:
    decision = decision_for(merged(ADULT_MALE, victim={"age": 15, "sex": "female"}, risk="low",
                                   exploitation=["sexual_exploitation"]))
    police = [r for r in decision.referrals if (r.agency_type, r.service) == ("police", "investigation")]
    assert len(police) == 1
    assert [r.rule_id for r in police[0].reasons] == ["police-investigation", "police-child", "tpks-report-to-police"]
    assert police[0].priority == "high"
    assert police[0].sla_hours == 72
    uptd = referral(decision, "uptd_ppa", "case_management")
    assert [r.rule_id for r in uptd.reasons] == ["uptd-ppa-child", "uptd-ppa-female"]
    health = decision_for(merged(ADULT_MALE, needs=["medical"], injured=True, risk="low"))
    medical = referral(health, "health", "medical")
    assert {r.rule_id for r in medical.reasons} == {"health-medical", "health-first-aid"}
    assert medical.priority == "high"


def test_every_referral_pair_is_unique() -> None:
    decision = decision_for(REFERENCE_DATA)
    pairs = [(r.agency_type, r.service) for r in decision.referrals]
    assert len(pairs) == len(set(pairs))


# ---------------------------------------------------------------- ids, follow-ups, determinism


def test_referral_id_is_stable_and_matches_the_contract_pattern() -> None:
    first = referral_id("case-0123456789abcdef0123", "police", "investigation")
    assert first == referral_id("case-0123456789abcdef0123", "police", "investigation")
    assert re.fullmatch(r"ref-[0-9a-f]{20}", first)
    assert first != referral_id("case-0123456789abcdef0123", "police", "protection")
    assert first != referral_id("case-0123456789abcdef0123", "police", "investigation", "polda-kalsel")


def test_existing_referrals_are_not_made_again() -> None:
    first = decision_for(merged(ADULT_MALE, needs=["medical"]))
    issued = {r.referral_id for r in first.referrals}
    follow_up = decision_for(merged(ADULT_MALE, needs=["medical", "shelter"]), existing=issued)
    assert referred(follow_up) == {("social_services", "shelter")}
    assert {a.referral_id for a in follow_up.already_referred} == issued


def test_decision_is_deterministic_and_hash_has_no_pii() -> None:
    one, two = decision_for(REFERENCE_DATA), decision_for(REFERENCE_DATA)
    assert one.model_dump() == two.model_dump()
    assert one.input_hash.startswith("sha256:")
    other = decision_for(merged(REFERENCE_DATA, needs=["medical"]))
    assert other.input_hash != one.input_hash


def test_trace_covers_every_rule_and_explains_non_firing() -> None:
    decision = decision_for(ADULT_MALE)
    assert [t.rule_id for t in decision.trace] == [r.id for r in pack().rules]
    by_id = {t.rule_id: t for t in decision.trace}
    assert by_id["police-investigation"].fired
    assert by_id["health-medical"].why == "condition false: needs has none of medical"
    assert by_id["labour-inspection"].why.startswith("condition false:")
    text = " ".join(t.why for t in decision.trace)
    assert "Budi" not in text and "6371010101900001" not in text


# ---------------------------------------------------------------- the reference report


def test_reference_report_reaches_the_required_agency_types() -> None:
    decision = decision_for(REFERENCE_EVENT)
    types = {r.agency_type.value for r in decision.referrals}
    assert {"uptd_ppa", "police", "health", "migrant_worker_protection", "social_services"} <= types
    assert referral(decision, "uptd_ppa", "case_management").agency == "uptd-ppa-banjarmasin"
    assert referral(decision, "police", "investigation").agency == "polresta-banjarmasin"
    assert referral(decision, "health", "medical").resolution == "regency agency"
    assert referral(decision, "migrant_worker_protection", "migrant_worker_protection").resolution == "provincial agency"
    assert "labour" not in types


def test_build_case_reads_an_event_or_its_data() -> None:
    from_event = case_of(REFERENCE_EVENT)
    from_data = build_case(REFERENCE_DATA, reporter="bp3mi-kalsel")
    expected = case_id_for("bp3mi-kalsel", REFERENCE_DATA["report_ref"], key=EXPLAIN_CASE_KEY)
    assert from_event.case_id == from_data.case_id == expected
    assert from_event.reporter == "bp3mi-kalsel"
    assert from_event.age_group == "child"
    assert from_event.risk == "high" and from_event.screening is not None


def test_to_event_data_is_a_valid_contract_event() -> None:
    decision = decision_for(REFERENCE_DATA)
    for made in decision.referrals:
        data = made.to_event_data(decision.ruleset_version)
        assert isinstance(data, ReferralRequestedData)
        again = ReferralRequestedData.model_validate(data.model_dump(mode="json"))
        assert again.referral_id == made.referral_id and again.ruleset_version == pack().version


def test_decide_needs_an_aware_clock() -> None:
    from datetime import datetime

    with pytest.raises(ValueError):
        decide(case_of(ADULT_MALE), pack(), registry(), views(), now=datetime(2026, 1, 1))
