"""The facts a rule condition sees: a flat, non-identifying projection of a `Case`.

No name, NIK, phone, birth date, pseudonym or narrative ever enters the facts, so a rule, its trace and
the decision's input hash cannot leak who the victim is.
"""

from __future__ import annotations

from typing import Any

from contracts.events import Case
from contracts.vocab import (
    MIGRANT_WORKER_PROFILES,
    AgeGroup,
    ExploitationLocation,
    Nationality,
    Sex,
)

Facts = dict[str, Any]

LIST_FACTS: tuple[str, ...] = ("exploitation", "indicators", "needs")
"""Facts holding lists of codes: the rule index keys on their members."""

BOOL_FACTS: tuple[str, ...] = (
    "child",
    "adult",
    "female",
    "male",
    "foreign",
    "migrant_worker",
    "abroad",
    "in_indonesia",
    "injured",
    "still_in_exploitation",
    "has_case_manager",
    "has_disability",
)

FACT_TYPES: dict[str, type] = {
    "age": int,
    "age_group": str,
    "sex": str,
    "nationality": str,
    "migration_profile": str,
    "exploitation_location": str,
    "country": str,
    "risk": str,
    "regency": str,
    "channel": str,
    "recruitment_modus": str,
    "identification_status": str,
    "screening_result": str,
    "consent": str,
    **{name: list for name in LIST_FACTS},
    **{name: bool for name in BOOL_FACTS},
}
"""Every fact name a condition may use, with its type; `country` and `screening_result` may be null."""

FACT_NAMES = frozenset(FACT_TYPES)


def consent_code(case: Case) -> str:
    """`all`, `none` or `some`: what the victim agreed to share, without the list."""
    share = case.consent.share_with
    return share if isinstance(share, str) else "some"


def facts_of(case: Case) -> Facts:
    """The facts of a case, with every name of `FACT_TYPES` present (lists sorted for a stable hash)."""
    victim, location = case.victim, case.location
    abroad = location.exploitation_location is ExploitationLocation.ABROAD
    child = case.age_group is AgeGroup.CHILD
    return {
        "age": victim.age,
        "age_group": case.age_group.value,
        "child": child,
        "adult": not child,
        "sex": victim.sex.value,
        "female": victim.sex is Sex.FEMALE,
        "male": victim.sex is Sex.MALE,
        "nationality": victim.nationality.value,
        "foreign": victim.nationality is not Nationality.WNI,
        "migration_profile": victim.migration_profile.value,
        "migrant_worker": victim.migration_profile in MIGRANT_WORKER_PROFILES,
        "exploitation": sorted(e.value for e in case.exploitation),
        "exploitation_location": location.exploitation_location.value,
        "abroad": abroad,
        "in_indonesia": not abroad,
        "country": location.country,
        "indicators": sorted(i.value for i in case.indicators),
        "needs": sorted(n.value for n in case.needs),
        "risk": case.risk.value,
        "injured": case.injured,
        "still_in_exploitation": case.still_in_exploitation,
        "has_case_manager": case.has_case_manager,
        "has_disability": bool(victim.disabilities),
        "regency": case.regency.value,
        "channel": case.channel.value,
        "recruitment_modus": case.recruitment_modus.value,
        "identification_status": case.identification_status.value,
        "screening_result": case.screening.result if case.screening else None,
        "consent": consent_code(case),
    }


def sample_facts() -> list[Facts]:
    """Two contrasting fact sets (a child abroad, an adult at home) used to type-check conditions at load."""
    child: Facts = {
        "age": 16,
        "age_group": "child",
        "child": True,
        "adult": False,
        "sex": "female",
        "female": True,
        "male": False,
        "nationality": "wni",
        "foreign": False,
        "migration_profile": "pmi_non_procedural",
        "migrant_worker": True,
        "exploitation": ["domestic_servitude", "forced_labour"],
        "exploitation_location": "abroad",
        "abroad": True,
        "in_indonesia": False,
        "country": "MY",
        "indicators": ["FL02", "FL07"],
        "needs": ["medical", "repatriation"],
        "risk": "high",
        "injured": True,
        "still_in_exploitation": True,
        "has_case_manager": False,
        "has_disability": True,
        "regency": "6371",
        "channel": "bp3mi",
        "recruitment_modus": "social_media_job_offer",
        "identification_status": "reported",
        "screening_result": "likely_trafficking",
        "consent": "all",
    }
    adult: Facts = {
        **child,
        "age": 34,
        "age_group": "adult",
        "child": False,
        "adult": True,
        "sex": "male",
        "female": False,
        "male": True,
        "nationality": "wna",
        "foreign": True,
        "migration_profile": "foreign_in_indonesia",
        "migrant_worker": False,
        "exploitation": [],
        "exploitation_location": "in_province",
        "abroad": False,
        "in_indonesia": True,
        "country": None,
        "indicators": [],
        "needs": [],
        "risk": "low",
        "injured": False,
        "still_in_exploitation": False,
        "has_case_manager": True,
        "has_disability": False,
        "screening_result": None,
        "consent": "none",
    }
    return [child, adult]
