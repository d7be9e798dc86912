"""Need-to-know: each agency type's view holds only what it may see; the catalogue is validated."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from contracts.vocab import AgencyType
from runtime.profile import profile_dir
from services.routing.views import ViewCatalogError, parse_views, path_exists
from tests.routing_cases import (
    REFERENCE_DATA,
    SECRET_NAME,
    SECRET_NARRATIVE,
    SECRET_NIK,
    case_of,
    decision_for,
    views,
)

IDENTITY_TYPES = {
    AgencyType.UPTD_PPA, AgencyType.POLICE, AgencyType.HEALTH, AgencyType.IMMIGRATION,
    AgencyType.MIGRANT_WORKER_PROTECTION, AgencyType.CIVIL_REGISTRY, AgencyType.SOCIAL_SERVICES,
    AgencyType.WITNESS_VICTIM_PROTECTION, AgencyType.PROSECUTOR, AgencyType.FOREIGN_AFFAIRS, AgencyType.LEGAL_AID,
}
NARRATIVE_TYPES = {AgencyType.UPTD_PPA, AgencyType.POLICE}


def raw_views() -> dict:
    return yaml.safe_load((profile_dir() / "views.yaml").read_text())


@pytest.mark.parametrize("agency_type", list(AgencyType), ids=lambda t: t.value)
def test_view_per_agency_type(agency_type: AgencyType) -> None:
    case = case_of(REFERENCE_DATA)
    view = views().view_of(case, agency_type)
    text = json.dumps(view)
    assert view["case_id"] == case.case_id
    assert view["regency"] == "6371" and view["age_group"] == "child"
    assert (SECRET_NIK in text) == (agency_type in IDENTITY_TYPES)
    assert (SECRET_NAME in text) == (agency_type in IDENTITY_TYPES)
    assert (SECRET_NARRATIVE in text) == (agency_type in NARRATIVE_TYPES)
    declared = set(views().paths_for(agency_type))
    for key in view:
        assert any(p == key or p.startswith(key + ".") for p in declared), key


@pytest.mark.parametrize("agency_type", [AgencyType.EDUCATION, AgencyType.LABOUR, AgencyType.GT_SECRETARIAT])
def test_never_identity_nor_narrative(agency_type: AgencyType) -> None:
    view = views().view_of(case_of(REFERENCE_DATA), agency_type)
    assert "narrative" not in view
    assert "identity" not in view.get("victim", {})


def test_health_sees_identity_and_medical_needs_only() -> None:
    view = views().view_of(case_of(REFERENCE_DATA), AgencyType.HEALTH)
    assert view["victim"]["identity"]["nik"] == SECRET_NIK
    assert view["needs"] == ["medical", "psychological"]
    assert "narrative" not in view


def test_referrals_carry_the_receiving_type_view() -> None:
    decision = decision_for(REFERENCE_DATA)
    for made in decision.referrals:
        assert made.case == views().view_of(case_of(REFERENCE_DATA), made.receiving_type)


def test_every_agency_type_needs_a_view() -> None:
    data = raw_views()
    del data["views"]["labour"]
    with pytest.raises(ViewCatalogError, match="no view for agency type labour"):
        parse_views(data)


def test_unknown_paths_are_refused() -> None:
    data = raw_views()
    data["views"]["police"]["fields"].append("victim.shoe_size")
    with pytest.raises(ViewCatalogError, match="police: unknown case path `victim.shoe_size`"):
        parse_views(data)


@pytest.mark.parametrize(
    ("agency_type", "path"),
    [("education", "victim.identity"), ("labour", "narrative"), ("gt_secretariat", "victim"),
     ("health", "narrative"), ("education", "victim.identity.nik")],
)
def test_limits_no_profile_may_lift(agency_type: str, path: str) -> None:
    data = copy.deepcopy(raw_views())
    data["views"][agency_type]["fields"].append(path)
    with pytest.raises(ViewCatalogError, match=f"{agency_type}: may never see"):
        parse_views(data)


def test_always_may_not_grant_identity() -> None:
    data = raw_views()
    data["always"].append("victim")
    with pytest.raises(ViewCatalogError, match="always: `victim` reveals"):
        parse_views(data)


def test_paths_follow_the_case_model() -> None:
    assert path_exists("victim.identity.nik")
    assert path_exists("screening.result")
    assert not path_exists("victim.age.years")
    assert not path_exists("identity")


@pytest.mark.parametrize("agency_type", list(AgencyType), ids=lambda t: t.value)
def test_no_agency_type_may_see_possible_duplicates(agency_type: AgencyType) -> None:
    """Duplicate flags are the coordinator's to review (issue 17): in a view they are a NIK oracle."""
    data = copy.deepcopy(raw_views())
    data["views"][agency_type.value]["fields"].append("possible_duplicates")
    with pytest.raises(ViewCatalogError, match=f"{agency_type.value}: may never see `possible_duplicates`"):
        parse_views(data)


def test_always_may_not_carry_possible_duplicates() -> None:
    data = raw_views()
    data["always"].append("possible_duplicates")
    with pytest.raises(ViewCatalogError, match="always: no view may carry `possible_duplicates`"):
        parse_views(data)


def test_the_profile_grants_possible_duplicates_to_nobody() -> None:
    assert not any("possible_duplicates" in views().paths_for(t) for t in AgencyType)
