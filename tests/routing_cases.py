"""Shared routing test data: the profile's pack, views and registry, the reference case, and small helpers."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from contracts.events import Case
from contracts.records import Agency
from contracts.vocab import AgencyType, Service
from domain.registry import AgencyRegistry
from runtime.profile import load_registry_file, profile_dir
from services.routing.decide import decide
from services.routing.pack_tests import build_case
from services.routing.plan import Decision, PlannedReferral
from services.routing.rules import RulePack, load_pack
from services.routing.views import ViewCatalog, load_views
from tests.conftest import REFERENCE_REPORT

NOW = datetime(2026, 11, 20, 0, 15, tzinfo=UTC)

REFERENCE_EVENT: dict[str, Any] = copy.deepcopy(REFERENCE_REPORT)
REFERENCE_DATA: dict[str, Any] = REFERENCE_EVENT["data"]

SECRET_NAME = "Siti A."
SECRET_NIK = "6371015507100003"
SECRET_NARRATIVE = "passport held by the employer"

ADULT_MALE: dict[str, Any] = {
    "report_ref": "T-ADULT-1",
    "channel": "hotline",
    "victim": {
        "pseudonym": "T-1",
        "age": 30,
        "sex": "male",
        "nationality": "wni",
        "migration_profile": "domestic_internal",
        "identity": {"name": "Budi T.", "nik": "6371010101900001"},
    },
    "location": {"regency": "6371", "exploitation_location": "in_province"},
    "risk": "medium",
    "has_case_manager": True,
    "consent": {"share_with": "all", "recorded_by": "uptd-ppa-kalsel/officer-1"},
    "narrative": "Invented narrative.",
}


def merged(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """`base` with top-level keys replaced and `victim` / `location` / `consent` merged."""
    data = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


@lru_cache(maxsize=1)
def pack() -> RulePack:
    return load_pack(profile_dir())


@lru_cache(maxsize=1)
def views() -> ViewCatalog:
    return load_views(profile_dir())


@lru_cache(maxsize=1)
def registry() -> AgencyRegistry:
    return load_registry_file()


def case_of(data: dict[str, Any]) -> Case:
    return build_case(data, reporter="uptd-ppa-kalsel")


def decision_for(data: dict[str, Any], **kwargs: Any) -> Decision:
    kwargs.setdefault("now", NOW)
    return decide(
        case_of(data), kwargs.pop("rules", None) or pack(), kwargs.pop("registry", None) or registry(), views(), **kwargs
    )


def referred(decision: Decision) -> set[tuple[str, str]]:
    return {(r.agency_type.value, r.service.value) for r in decision.referrals}


def referral(decision: Decision, agency_type: str, service: str) -> PlannedReferral:
    return next(
        r for r in decision.referrals if r.agency_type == AgencyType(agency_type) and r.service == Service(service)
    )


def withheld(decision: Decision) -> set[tuple[str, str]]:
    return {(w.agency_type.value, w.service.value) for w in decision.withheld}


def small_registry(*agencies: Agency) -> AgencyRegistry:
    return AgencyRegistry.of(agencies)
