"""Agency resolution (regency, provincial, disabled, fallback, secretariat) and rerouting."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from contracts.records import Agency
from contracts.vocab import AgencyType
from services.routing.reroute import reroute
from services.routing.rules import parse_pack
from tests.routing_cases import (
    ADULT_MALE,
    NOW,
    REFERENCE_DATA,
    SECRET_NAME,
    SECRET_NIK,
    case_of,
    decision_for,
    merged,
    pack,
    referral,
    registry,
    small_registry,
    views,
)

SECRETARIAT = Agency(id="gt-kalsel", type=AgencyType.GT_SECRETARIAT)
POLDA = Agency(id="polda-kalsel", type=AgencyType.POLICE)
POLRESTA = Agency(id="polresta-banjarmasin", type=AgencyType.POLICE, regions=["6371"])
POLRES_BANJAR = Agency(id="polres-banjar", type=AgencyType.POLICE, regions=["6303"])


def police_for(regency: str, *agencies: Agency) -> tuple[str, str]:
    decision = decision_for(merged(ADULT_MALE, location={"regency": regency}), registry=small_registry(*agencies))
    made = referral(decision, "police", "investigation")
    return made.agency, made.resolution


def test_regency_agency_first() -> None:
    assert police_for("6371", SECRETARIAT, POLDA, POLRESTA, POLRES_BANJAR) == ("polresta-banjarmasin", "regency agency")


def test_provincial_when_the_regency_has_none() -> None:
    assert police_for("6309", SECRETARIAT, POLDA, POLRESTA) == ("polda-kalsel", "provincial agency")


def test_disabled_agencies_are_skipped() -> None:
    disabled = POLRESTA.model_copy(update={"enabled": False})
    assert police_for("6371", SECRETARIAT, POLDA, disabled) == ("polda-kalsel", "provincial agency")


def test_secretariat_when_no_agency_of_the_type() -> None:
    agency, resolution = police_for("6371", SECRETARIAT)
    assert agency == "gt-kalsel"
    assert resolution == "no agency of type police: sent to the task-force secretariat"


def test_secretariat_view_hides_identity() -> None:
    decision = decision_for(REFERENCE_DATA, registry=small_registry(SECRETARIAT))
    assert decision.referrals and all(r.agency == "gt-kalsel" for r in decision.referrals)
    assert all(r.receiving_type == "gt_secretariat" for r in decision.referrals)
    assert SECRET_NIK not in json.dumps([r.case for r in decision.referrals])


def test_unroutable_without_any_agency_nor_secretariat() -> None:
    decision = decision_for(ADULT_MALE, registry=small_registry())
    assert decision.referrals == []
    assert [(u.agency_type.value, u.reason) for u in decision.unroutable] == [
        ("police", "no agency of type police and no task-force secretariat left")
    ]


def test_fallback_agency_type_before_the_secretariat() -> None:
    uptd = Agency(id="uptd-ppa-kalsel", type=AgencyType.UPTD_PPA)
    lbh = Agency(id="lbh-banjarmasin", type=AgencyType.LEGAL_AID)
    data = merged(ADULT_MALE, needs=["legal_aid"])
    with_lbh = referral(decision_for(data, registry=small_registry(SECRETARIAT, uptd, lbh)), "legal_aid", "legal_aid")
    assert with_lbh.agency == "lbh-banjarmasin"
    made = referral(decision_for(data, registry=small_registry(SECRETARIAT, uptd)), "legal_aid", "legal_aid")
    assert (made.agency, made.receiving_type) == ("uptd-ppa-kalsel", "uptd_ppa")
    assert made.resolution == "no agency of type legal_aid: fallback to uptd_ppa (provincial agency)"
    assert made.referral_id == with_lbh.referral_id
    assert made.case == views().view_of(case_of(data), AgencyType.UPTD_PPA)


def test_fallback_respects_consent() -> None:
    uptd = Agency(id="uptd-ppa-kalsel", type=AgencyType.UPTD_PPA)
    data = merged(ADULT_MALE, needs=["legal_aid"], consent={"share_with": ["legal_aid"]})
    made = referral(decision_for(data, registry=small_registry(SECRETARIAT, uptd)), "legal_aid", "legal_aid")
    assert made.agency == "gt-kalsel"


# ---------------------------------------------------------------- reroute


def previous_police(data: dict = ADULT_MALE):
    decision = decision_for(data)
    made = referral(decision, "police", "investigation")
    return made.entry(decision.ruleset_version)


def do_reroute(previous, status: str, declined: set[str], redirect_to: str | None = None, data: dict = ADULT_MALE,
               reg=None):
    return reroute(previous, status=status, redirect_to=redirect_to, declined=declined, case=case_of(data),
                   registry=reg or registry(), views=views(), pack=pack(), now=NOW)


def test_rejected_goes_to_the_next_agency_of_the_type_and_links_back() -> None:
    previous = previous_police()
    assert previous.agency == "polresta-banjarmasin"
    new = do_reroute(previous, "rejected", {"polresta-banjarmasin"})
    assert new is not None
    assert new.agency == "polda-kalsel"
    assert new.replaces == previous.referral_id
    assert new.referral_id != previous.referral_id
    assert new.service == previous.service and new.agency_type == previous.agency_type
    assert new.reasons == previous.reasons
    assert new.resolution.startswith("rejected by polresta-banjarmasin")


def test_never_back_to_the_agency_that_declined_even_if_not_listed() -> None:
    previous = previous_police()
    new = do_reroute(previous, "expired", set())
    assert new is not None and new.agency != previous.agency


def test_secretariat_at_the_end_then_none() -> None:
    previous = previous_police()
    new = do_reroute(previous, "rejected", {"polresta-banjarmasin", "polda-kalsel"})
    assert new is not None and new.agency == "gt-kalsel"
    assert "sent to the task-force secretariat" in new.resolution
    assert new.case == views().view_of(case_of(ADULT_MALE), AgencyType.GT_SECRETARIAT)
    assert do_reroute(previous, "rejected", {"polresta-banjarmasin", "polda-kalsel", "gt-kalsel"}) is None


def test_redirected_to_a_named_agency() -> None:
    previous = previous_police()
    new = do_reroute(previous, "redirected", {"polresta-banjarmasin"}, redirect_to="polres-banjar")
    assert new is not None
    assert new.agency == "polres-banjar"
    assert new.resolution == "redirected by polresta-banjarmasin to polres-banjar"


@pytest.mark.parametrize("target", ["no-such-agency", "polresta-banjarmasin"])
def test_redirect_to_an_ineligible_agency_falls_back_to_the_next(target: str) -> None:
    new = do_reroute(previous_police(), "redirected", {"polresta-banjarmasin"}, redirect_to=target)
    assert new is not None and new.agency == "polda-kalsel"


def test_redirect_to_a_disabled_agency_is_ignored() -> None:
    reg = registry().with_agency(registry().get("polres-banjar").model_copy(update={"enabled": False}))
    new = do_reroute(previous_police(), "redirected", set(), redirect_to="polres-banjar", reg=reg)
    assert new is not None and new.agency == "polda-kalsel"


def test_redirect_to_a_type_without_consent_goes_to_the_secretariat() -> None:
    # Issue 17 changed this: the next police agency was chosen; a redirect the consent does not allow is
    # now the coordinator's to see, with the reason.
    data = merged(ADULT_MALE, consent={"share_with": ["police"]})
    new = do_reroute(previous_police(data), "redirected", set(), redirect_to="dinsos-kalsel", data=data)
    assert new is not None and new.agency == "gt-kalsel"
    assert new.resolution == (
        "redirected by polresta-banjarmasin to dinsos-kalsel refused: consent (share_with: some) does not cover "
        "social_services; no rule refers investigation to social_services: sent to the task-force secretariat"
    )


def test_reroute_of_a_reroute_gets_a_new_id() -> None:
    first = do_reroute(previous_police(), "rejected", set())
    assert first is not None
    second = do_reroute(first.to_event_data(pack().version), "rejected", {"polresta-banjarmasin"})
    assert second is not None
    assert second.agency == "gt-kalsel" and second.replaces == first.referral_id
    assert len({first.referral_id, second.referral_id}) == 2


def test_reroute_keeps_the_legal_aid_fallback() -> None:
    uptd = Agency(id="uptd-ppa-kalsel", type=AgencyType.UPTD_PPA)
    lbh = Agency(id="lbh-banjarmasin", type=AgencyType.LEGAL_AID)
    reg = small_registry(SECRETARIAT, uptd, lbh)
    data = merged(ADULT_MALE, needs=["legal_aid"])
    decision = decision_for(data, registry=reg)
    previous = referral(decision, "legal_aid", "legal_aid").to_event_data(decision.ruleset_version)
    new = do_reroute(previous, "rejected", {"lbh-banjarmasin"}, data=data, reg=reg)
    assert new is not None and new.agency == "uptd-ppa-kalsel"


def test_reroute_refuses_other_statuses() -> None:
    with pytest.raises(ValueError):
        do_reroute(previous_police(), "accepted", set())


# ---------------------------------------------------------------- who may hold a rerouted referral (issue 17)

CHILD_NO_CONSENT = merged(REFERENCE_DATA, consent={"share_with": "none"})
CHILD_ALL = REFERENCE_DATA
ADULT_LEGAL_AID = merged(ADULT_MALE, needs=["legal_aid"], consent={"share_with": ["legal_aid", "uptd_ppa"]})
ADULT_LEGAL_AID_ONLY = merged(ADULT_MALE, needs=["legal_aid"], consent={"share_with": ["legal_aid"]})


@dataclass(frozen=True)
class Redirect:
    """A referral of the case (`asked` = agency type, service), redirected by its holder to `target`."""

    data: dict[str, Any]
    asked: tuple[str, str]
    target: str
    holder: str
    resolution: str


REDIRECTS = [
    pytest.param(
        Redirect(CHILD_NO_CONSENT, ("uptd_ppa", "case_management"), "kemlu-pwni", "gt-kalsel",
                 "redirected by uptd-ppa-banjarmasin to kemlu-pwni refused: consent (share_with: none) does not cover "
                 "foreign_affairs; the legal override covers uptd_ppa only; no rule refers case_management to "
                 "foreign_affairs: sent to the task-force secretariat"),
        id="child, consent none: the override does not follow a redirect to another type",
    ),
    pytest.param(
        Redirect(CHILD_NO_CONSENT, ("police", "investigation"), "uptd-ppa-kalsel", "gt-kalsel",
                 "redirected by polresta-banjarmasin to uptd-ppa-kalsel refused: consent (share_with: none) does not "
                 "cover uptd_ppa; the legal override covers police only; no rule refers investigation to uptd_ppa: "
                 "sent to the task-force secretariat"),
        id="child, consent none: the police override does not reach UPTD PPA either",
    ),
    pytest.param(
        Redirect(CHILD_ALL, ("uptd_ppa", "case_management"), "kemlu-pwni", "gt-kalsel",
                 "redirected by uptd-ppa-banjarmasin to kemlu-pwni refused: no rule refers case_management to "
                 "foreign_affairs: sent to the task-force secretariat"),
        id="consent all: a type the rules never chose for the service",
    ),
    pytest.param(
        Redirect(ADULT_MALE, ("police", "investigation"), "dinsos-kalsel", "gt-kalsel",
                 "redirected by polresta-banjarmasin to dinsos-kalsel refused: no rule refers investigation to "
                 "social_services: sent to the task-force secretariat"),
        id="consent all, adult: investigation never goes to social services",
    ),
    pytest.param(
        Redirect(CHILD_NO_CONSENT, ("uptd_ppa", "case_management"), "uptd-ppa-kalsel", "uptd-ppa-kalsel",
                 "redirected by uptd-ppa-banjarmasin to uptd-ppa-kalsel"),
        id="child, consent none: the same type, which the override covers",
    ),
    pytest.param(
        Redirect(ADULT_MALE, ("police", "investigation"), "polres-banjar", "polres-banjar",
                 "redirected by polresta-banjarmasin to polres-banjar"),
        id="consent all: the same type",
    ),
    pytest.param(
        Redirect(ADULT_LEGAL_AID, ("legal_aid", "legal_aid"), "uptd-ppa-kalsel", "uptd-ppa-kalsel",
                 "redirected by lbh-banjarmasin to uptd-ppa-kalsel"),
        id="consent lists the declared fallback type",
    ),
    pytest.param(
        Redirect(ADULT_LEGAL_AID_ONLY, ("legal_aid", "legal_aid"), "uptd-ppa-kalsel", "gt-kalsel",
                 "redirected by lbh-banjarmasin to uptd-ppa-kalsel refused: consent (share_with: some) does not cover "
                 "uptd_ppa: sent to the task-force secretariat"),
        id="the declared fallback type without consent",
    ),
    pytest.param(
        Redirect(CHILD_ALL, ("migrant_worker_protection", "repatriation"), "kemlu-pwni", "kemlu-pwni",
                 "redirected by bp3mi-kalsel to kemlu-pwni"),
        id="consent all: another type the rules refer the service to",
    ),
]


@pytest.mark.parametrize("case", REDIRECTS)
def test_who_may_hold_a_redirected_referral(case: Redirect) -> None:
    agency_type, service = case.asked
    decision = decision_for(case.data)
    previous = referral(decision, agency_type, service).entry(decision.ruleset_version)
    new = do_reroute(previous, "redirected", set(), redirect_to=case.target, data=case.data)
    assert new is not None
    assert (new.agency, new.resolution) == (case.holder, case.resolution)
    assert (new.agency_type, new.service) == (previous.agency_type, previous.service)
    received = registry().get(case.holder)
    assert received is not None and new.receiving_type is received.type
    assert new.case == views().view_of(case_of(case.data), received.type)
    if case.holder == "gt-kalsel":
        assert "identity" not in new.case["victim"] and "narrative" not in new.case
        assert SECRET_NIK not in json.dumps(new.case) and SECRET_NAME not in json.dumps(new.case)


def test_redirect_to_the_secretariat_is_always_allowed() -> None:
    decision = decision_for(CHILD_NO_CONSENT)
    previous = referral(decision, "uptd_ppa", "case_management").entry(decision.ruleset_version)
    new = do_reroute(previous, "redirected", set(), redirect_to="gt-kalsel", data=CHILD_NO_CONSENT)
    assert new is not None and (new.agency, new.resolution) == ("gt-kalsel", "redirected by uptd-ppa-banjarmasin to gt-kalsel")


def test_a_redirect_to_an_unavailable_agency_says_why_it_was_not_used() -> None:
    reg = registry().with_agency(registry().get("polres-banjar").model_copy(update={"enabled": False}))
    new = do_reroute(previous_police(), "redirected", set(), redirect_to="polres-banjar", reg=reg)
    assert new is not None and new.agency == "polda-kalsel"
    assert new.resolution == "redirected by polresta-banjarmasin to polres-banjar, not used (polres-banjar is disabled): " \
        "provincial agency"


def test_a_reroute_when_consent_no_longer_covers_the_type_goes_to_the_secretariat() -> None:
    previous = previous_police()
    narrowed = merged(ADULT_MALE, consent={"share_with": ["uptd_ppa"]})  # a follow-up narrowed the consent
    new = do_reroute(previous, "rejected", set(), data=narrowed)
    assert new is not None and new.agency == "gt-kalsel"
    assert new.resolution == ("rejected by polresta-banjarmasin: consent (share_with: some) no longer covers police: "
                              "sent to the task-force secretariat")


MANDATORY_LEGAL_AID = {
    "id": "legal-aid-child", "description": "A child always gets legal aid.", "legal_basis": "test",
    "when": "child", "mandatory": True, "mandatory_basis": "test law naming legal aid",
    "refer": [{"agency_type": "legal_aid", "service": "legal_aid", "fallback_agency_type": "uptd_ppa"}],
}


def test_an_override_never_reaches_a_fallback_type() -> None:
    """A mandatory rule's fallback is a type the law did not name: decide and reroute both need consent for it."""
    data = pack().model_dump(mode="json", include={"version", "acknowledgement_hours", "rules"})
    rules = parse_pack({**data, "rules": [*data["rules"], MANDATORY_LEGAL_AID]})
    uptd = Agency(id="uptd-ppa-kalsel", type=AgencyType.UPTD_PPA)
    lbh = Agency(id="lbh-banjarmasin", type=AgencyType.LEGAL_AID)
    without_lbh = small_registry(SECRETARIAT, uptd)
    made = referral(decision_for(CHILD_NO_CONSENT, rules=rules, registry=without_lbh), "legal_aid", "legal_aid")
    assert made.overridden and made.agency == "gt-kalsel"
    assert made.resolution == "no agency of type legal_aid: sent to the task-force secretariat"

    with_lbh = small_registry(SECRETARIAT, uptd, lbh)
    decision = decision_for(CHILD_NO_CONSENT, rules=rules, registry=with_lbh)
    previous = referral(decision, "legal_aid", "legal_aid").entry(decision.ruleset_version)
    assert previous.agency == "lbh-banjarmasin"
    new = reroute(previous, status="rejected", redirect_to=None, declined=set(), case=case_of(CHILD_NO_CONSENT),
                  registry=with_lbh, views=views(), pack=rules, now=NOW)
    assert new is not None and new.agency == "gt-kalsel"
