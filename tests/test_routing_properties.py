"""Properties over generated cases: determinism, reasons, consent, ids, the index and need-to-know."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.vocab import (
    AgencyType,
    ExploitationLocation,
    ExploitationType,
    Indicator,
    MigrationProfile,
    Nationality,
    Need,
    Regency,
    Risk,
    Sex,
)
from services.routing.conditions import CompiledRules, evaluate
from services.routing.decide import decide
from services.routing.facts import facts_of
from services.routing.reroute import reroute
from tests.routing_cases import NOW, case_of, pack, registry, views

NAME, NIK = "Rahasia Nama", "6371019999990001"
REFERRAL_ID = re.compile(r"^ref-[0-9a-f]{20}$")
NEVER_IDENTITY = {AgencyType.EDUCATION, AgencyType.LABOUR, AgencyType.GT_SECRETARIAT}


def subset(values: type) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from([v.value for v in values]), unique=True, max_size=5)


consents = st.one_of(
    st.just("all"), st.just("none"), st.lists(st.sampled_from([t.value for t in AgencyType]), unique=True, min_size=1, max_size=6)
)


@st.composite
def reports(draw: st.DrawFn) -> dict[str, Any]:
    location = draw(st.sampled_from([v.value for v in ExploitationLocation]))
    return {
        "report_ref": f"PROP-{draw(st.integers(0, 10**6))}",
        "channel": "hotline",
        "victim": {
            "pseudonym": "P-1",
            "age": draw(st.integers(0, 90)),
            "sex": draw(st.sampled_from([v.value for v in Sex])),
            "nationality": draw(st.sampled_from([v.value for v in Nationality])),
            "migration_profile": draw(st.sampled_from([v.value for v in MigrationProfile])),
            "disabilities": draw(st.lists(st.just("visual"), max_size=1)),
            "identity": {"name": NAME, "nik": NIK},
        },
        "location": {
            "regency": draw(st.sampled_from([v.value for v in Regency])),
            "exploitation_location": location,
            "country": "MY" if location == "abroad" else None,
        },
        "exploitation": draw(subset(ExploitationType)),
        "indicators": draw(subset(Indicator)),
        "needs": draw(st.lists(st.sampled_from([v.value for v in Need]), unique=True, max_size=8)),
        "risk": draw(st.sampled_from([v.value for v in Risk])),
        "injured": draw(st.booleans()),
        "still_in_exploitation": draw(st.booleans()),
        "has_case_manager": draw(st.booleans()),
        "consent": {"share_with": draw(consents), "recorded_by": "officer"},
        "narrative": "Rahasia narrative.",
    }


property_settings = settings(max_examples=150)


@property_settings
@given(reports())
def test_decisions_keep_every_promise(data: dict[str, Any]) -> None:
    case = case_of(data)
    decision = decide(case, pack(), registry(), views(), now=NOW)
    assert decision.model_dump() == decide(case, pack(), registry(), views(), now=NOW).model_dump()
    ids = [r.referral_id for r in decision.referrals]
    assert len(ids) == len(set(ids))
    for made in decision.referrals:
        assert REFERRAL_ID.match(made.referral_id)
        assert made.reasons
        consented = case.consent.covers(made.agency_type) and (
            made.receiving_type in (made.agency_type, AgencyType.GT_SECRETARIAT)
            or case.consent.covers(made.receiving_type)
        )
        if not consented:
            assert all(r.override and "consent overridden" in r.legal_basis for r in made.reasons)
            assert case.age_group == "child"
            assert made.agency_type in (AgencyType.UPTD_PPA, AgencyType.POLICE)
        if made.receiving_type in NEVER_IDENTITY:
            assert NIK not in json.dumps(made.case) and "narrative" not in made.case
    if case.age_group == "child":
        made_pairs = {(r.agency_type, r.service) for r in decision.referrals}
        assert (AgencyType.UPTD_PPA, "case_management") in made_pairs
        assert (AgencyType.POLICE, "investigation") in made_pairs
    for gap in decision.withheld:
        assert not case.consent.covers(gap.agency_type)
    record = json.dumps([t.model_dump() for t in decision.trace]) + decision.input_hash
    assert NAME not in record and NIK not in record and "Rahasia" not in record


@property_settings
@given(reports())
def test_the_index_never_changes_what_fires(data: dict[str, Any]) -> None:
    facts = facts_of(case_of(data))
    indexed = evaluate(pack().compiled, facts)
    full = evaluate(CompiledRules.of(pack().compiled.rules, indexed=False), facts)
    assert indexed.fired == full.fired
    assert [t.fired for t in indexed.traces] == [t.fired for t in full.traces]


AGENCY_IDS = sorted(registry().agencies)
case_ids = st.text(alphabet="0123456789abcdef", min_size=20, max_size=20).map(lambda h: f"case-{h}")


@property_settings
@given(reports(), st.lists(case_ids, min_size=1, max_size=3, unique=True),
       st.sampled_from(["rejected", "redirected", "expired"]), st.sampled_from(AGENCY_IDS))
def test_no_referral_carries_possible_duplicates(data: dict[str, Any], duplicates: list[str], status: str,
                                                 target: str) -> None:
    """Duplicate flags are for the coordinator's review: never in a referral, first or rerouted (issue 17)."""
    case = case_of(data).model_copy(update={"possible_duplicates": duplicates})
    decision = decide(case, pack(), registry(), views(), now=NOW)
    for made in decision.referrals:
        rerouted = reroute(made.entry(decision.ruleset_version), status=status, redirect_to=target, declined=set(),
                           case=case, registry=registry(), views=views(), pack=pack(), now=NOW)
        for sent in (made, rerouted):
            if sent is not None:
                text = json.dumps(sent.model_dump(mode="json"))
                assert "possible_duplicates" not in text and not any(d in text for d in duplicates)


@property_settings
@given(reports(), st.sampled_from(AGENCY_IDS))
def test_a_redirect_lands_only_where_consent_or_the_law_and_the_rules_allow(data: dict[str, Any], target: str) -> None:
    """Whatever agency a holder names, the new holder is of the type the rules asked for (consent or the
    override covers it), or of a type consent covers on its own that the rules refer the service to, or
    the secretariat."""
    case = case_of(data)
    decision = decide(case, pack(), registry(), views(), now=NOW)
    for made in decision.referrals:
        new = reroute(made.entry(decision.ruleset_version), status="redirected", redirect_to=target, declined=set(),
                      case=case, registry=registry(), views=views(), pack=pack(), now=NOW)
        assert new is not None, "the secretariat is always left"
        holder = new.receiving_type
        if holder is AgencyType.GT_SECRETARIAT:
            pass
        elif holder is made.agency_type:
            assert made.overridden or case.consent.covers(holder)
        else:
            assert case.consent.covers(holder) and holder in pack().receivers_of(made.service), new.resolution
        assert new.case == views().view_of(case, holder)
        if holder in NEVER_IDENTITY:
            assert NIK not in json.dumps(new.case) and "narrative" not in new.case
