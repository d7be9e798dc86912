"""The vocabulary of DOMAIN.md as enums: every code that may cross the wire."""

from __future__ import annotations

import re
from enum import StrEnum


class AgencyType(StrEnum):
    """Registry `type` codes of the agencies in a provincial task force."""

    GT_SECRETARIAT = "gt_secretariat"
    UPTD_PPA = "uptd_ppa"
    WOMEN_CHILD_PROTECTION_OFFICE = "women_child_protection_office"
    POLICE = "police"
    PROSECUTOR = "prosecutor"
    IMMIGRATION = "immigration"
    MIGRANT_WORKER_PROTECTION = "migrant_worker_protection"
    HEALTH = "health"
    SOCIAL_SERVICES = "social_services"
    LABOUR = "labour"
    EDUCATION = "education"
    WITNESS_VICTIM_PROTECTION = "witness_victim_protection"
    CIVIL_REGISTRY = "civil_registry"
    FOREIGN_AFFAIRS = "foreign_affairs"
    LEGAL_AID = "legal_aid"
    COMMUNITY_PROVIDER = "community_provider"
    LOCAL_GOVERNMENT = "local_government"


class Regency(StrEnum):
    """BPS/Kemendagri codes of the regencies of Kalimantan Selatan, with the dot dropped."""

    TANAH_LAUT = "6301"
    KOTABARU = "6302"
    BANJAR = "6303"
    BARITO_KUALA = "6304"
    TAPIN = "6305"
    HULU_SUNGAI_SELATAN = "6306"
    HULU_SUNGAI_TENGAH = "6307"
    HULU_SUNGAI_UTARA = "6308"
    TABALONG = "6309"
    TANAH_BUMBU = "6310"
    BALANGAN = "6311"
    KOTA_BANJARMASIN = "6371"
    KOTA_BANJARBARU = "6372"


PROVINCE_TIME_ZONE = "Asia/Makassar"
"""Kalimantan Selatan's time zone (WITA, UTC+8): the one officers read deadlines in."""

REGENCY_NAMES: dict[Regency, str] = {
    Regency.TANAH_LAUT: "Tanah Laut",
    Regency.KOTABARU: "Kotabaru",
    Regency.BANJAR: "Banjar",
    Regency.BARITO_KUALA: "Barito Kuala",
    Regency.TAPIN: "Tapin",
    Regency.HULU_SUNGAI_SELATAN: "Hulu Sungai Selatan",
    Regency.HULU_SUNGAI_TENGAH: "Hulu Sungai Tengah",
    Regency.HULU_SUNGAI_UTARA: "Hulu Sungai Utara",
    Regency.TABALONG: "Tabalong",
    Regency.TANAH_BUMBU: "Tanah Bumbu",
    Regency.BALANGAN: "Balangan",
    Regency.KOTA_BANJARMASIN: "Kota Banjarmasin",
    Regency.KOTA_BANJARBARU: "Kota Banjarbaru",
}


class AgeGroup(StrEnum):
    """`child` below 18 (UU 21/2007), else `adult`."""

    CHILD = "child"
    ADULT = "adult"


class Sex(StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER_UNKNOWN = "other_unknown"


class Nationality(StrEnum):
    WNI = "wni"
    WNA = "wna"
    STATELESS_UNKNOWN = "stateless_unknown"


class MigrationProfile(StrEnum):
    PMI_PROCEDURAL = "pmi_procedural"
    PMI_NON_PROCEDURAL = "pmi_non_procedural"
    CPMI = "cpmi"
    RETURNEE_DEPORTEE = "returnee_deportee"
    DOMESTIC_INTERNAL = "domestic_internal"
    FOREIGN_IN_INDONESIA = "foreign_in_indonesia"


MIGRANT_WORKER_PROFILES = frozenset(
    {
        MigrationProfile.PMI_PROCEDURAL,
        MigrationProfile.PMI_NON_PROCEDURAL,
        MigrationProfile.CPMI,
        MigrationProfile.RETURNEE_DEPORTEE,
    }
)


class ExploitationLocation(StrEnum):
    IN_PROVINCE = "in_province"
    OTHER_PROVINCE = "other_province"
    ABROAD = "abroad"


class ExploitationType(StrEnum):
    FORCED_LABOUR = "forced_labour"
    SEXUAL_EXPLOITATION = "sexual_exploitation"
    DOMESTIC_SERVITUDE = "domestic_servitude"
    FORCED_MARRIAGE = "forced_marriage"
    ONLINE_SCAM = "online_scam"
    DEBT_BONDAGE = "debt_bondage"
    ORGAN_REMOVAL = "organ_removal"
    BEGGING = "begging"
    OTHER = "other"


class Indicator(StrEnum):
    """ILO forced-labour indicators FL01–FL11 and the three legal elements of UU 21/2007 art. 1."""

    FL01 = "FL01"  # abuse of vulnerability
    FL02 = "FL02"  # deception
    FL03 = "FL03"  # restriction of movement
    FL04 = "FL04"  # isolation
    FL05 = "FL05"  # physical and sexual violence
    FL06 = "FL06"  # intimidation and threats
    FL07 = "FL07"  # retention of identity documents
    FL08 = "FL08"  # withholding of wages
    FL09 = "FL09"  # debt bondage
    FL10 = "FL10"  # abusive working and living conditions
    FL11 = "FL11"  # excessive overtime
    ACT_RECRUIT = "act_recruit"
    ACT_TRANSPORT = "act_transport"
    ACT_HARBOUR = "act_harbour"
    ACT_SEND = "act_send"
    ACT_TRANSFER = "act_transfer"
    ACT_RECEIVE = "act_receive"
    MEANS_THREAT = "means_threat"
    MEANS_VIOLENCE = "means_violence"
    MEANS_ABDUCTION = "means_abduction"
    MEANS_CONFINEMENT = "means_confinement"
    MEANS_FORGERY = "means_forgery"
    MEANS_DECEPTION = "means_deception"
    MEANS_ABUSE_OF_POWER = "means_abuse_of_power"
    MEANS_ABUSE_OF_VULNERABILITY = "means_abuse_of_vulnerability"
    MEANS_DEBT_BONDAGE = "means_debt_bondage"
    MEANS_PAYMENT = "means_payment"
    PURPOSE_EXPLOITATION = "purpose_exploitation"


INDICATOR_LABELS: dict[Indicator, str] = {
    Indicator.FL01: "abuse of vulnerability",
    Indicator.FL02: "deception",
    Indicator.FL03: "restriction of movement",
    Indicator.FL04: "isolation",
    Indicator.FL05: "physical and sexual violence",
    Indicator.FL06: "intimidation and threats",
    Indicator.FL07: "retention of identity documents",
    Indicator.FL08: "withholding of wages",
    Indicator.FL09: "debt bondage",
    Indicator.FL10: "abusive working and living conditions",
    Indicator.FL11: "excessive overtime",
}


class Need(StrEnum):
    """Needs of the victim; each is also the service a referral asks for."""

    MEDICAL = "medical"
    PSYCHOLOGICAL = "psychological"
    LEGAL_AID = "legal_aid"
    SHELTER = "shelter"
    SOCIAL_REHABILITATION = "social_rehabilitation"
    REPATRIATION = "repatriation"
    REINTEGRATION = "reintegration"
    RESTITUTION = "restitution"
    PROTECTION = "protection"
    DOCUMENTS = "documents"
    EDUCATION = "education"
    LIVELIHOOD = "livelihood"
    INVESTIGATION = "investigation"


class Service(StrEnum):
    """What a referral asks an agency to do: every need, plus coordination services."""

    MEDICAL = "medical"
    PSYCHOLOGICAL = "psychological"
    LEGAL_AID = "legal_aid"
    SHELTER = "shelter"
    SOCIAL_REHABILITATION = "social_rehabilitation"
    REPATRIATION = "repatriation"
    REINTEGRATION = "reintegration"
    RESTITUTION = "restitution"
    PROTECTION = "protection"
    DOCUMENTS = "documents"
    EDUCATION = "education"
    LIVELIHOOD = "livelihood"
    INVESTIGATION = "investigation"
    CASE_MANAGEMENT = "case_management"
    MIGRANT_WORKER_PROTECTION = "migrant_worker_protection"
    LABOUR_INSPECTION = "labour_inspection"
    RESTITUTION_CLAIM = "restitution_claim"
    RESTITUTION_CALCULATION = "restitution_calculation"
    TRAVEL_DOCUMENTS = "travel_documents"
    COORDINATION = "coordination"


class Risk(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class Priority(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Higher is more urgent: used to merge several rules into one referral."""
        return {"high": 3, "medium": 2, "low": 1}[self.value]


class IdentificationStatus(StrEnum):
    REPORTED = "reported"
    SUSPECTED = "suspected"
    PRESUMED_VICTIM = "presumed_victim"
    IDENTIFIED_BY_POLICE = "identified_by_police"
    CONFIRMED_BY_COURT = "confirmed_by_court"


class ReportChannel(StrEnum):
    """How the report reached the reporting agency."""

    HOTLINE = "hotline"
    WALK_IN = "walk_in"
    BP3MI = "bp3mi"
    IMMIGRATION = "immigration"
    POLICE = "police"
    PORT = "port"
    OUTREACH = "outreach"
    COMMUNITY = "community"
    ONLINE = "online"
    MISSION_ABROAD = "mission_abroad"
    REFERRAL = "referral"
    OTHER = "other"


class RecruitmentModus(StrEnum):
    """How the victim was recruited: the early-detection dimension of `alur report regions`."""

    SOCIAL_MEDIA_JOB_OFFER = "social_media_job_offer"
    SPONSOR_CALO = "sponsor_calo"
    ILLEGAL_AGENCY = "illegal_agency"
    FAMILY_ACQUAINTANCE = "family_acquaintance"
    ROMANCE = "romance"
    MARRIAGE_OFFER = "marriage_offer"
    SCHOLARSHIP_INTERNSHIP = "scholarship_internship"
    ABDUCTION = "abduction"
    DEBT = "debt"
    OTHER = "other"
    UNKNOWN = "unknown"


class ReferralStatus(StrEnum):
    """The referral lifecycle of DOMAIN.md, aligned with HL7 FHIR Task."""

    REQUESTED = "requested"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    REDIRECTED = "redirected"
    IN_PROGRESS = "in_progress"
    ON_HOLD = "on_hold"
    COMPLETED = "completed"
    NOT_DELIVERED = "not_delivered"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        ReferralStatus.REJECTED,
        ReferralStatus.REDIRECTED,
        ReferralStatus.COMPLETED,
        ReferralStatus.NOT_DELIVERED,
        ReferralStatus.CANCELLED,
        ReferralStatus.EXPIRED,
    }
)


class ResponseStatus(StrEnum):
    """The statuses an agency may answer with (DESIGN.md, agency responses)."""

    ACKNOWLEDGED = "acknowledged"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    REDIRECTED = "redirected"
    IN_PROGRESS = "in_progress"
    ON_HOLD = "on_hold"
    COMPLETED = "completed"
    NOT_DELIVERED = "not_delivered"


class RejectionReason(StrEnum):
    OUT_OF_MANDATE = "out_of_mandate"
    NOT_ELIGIBLE = "not_eligible"
    NO_CAPACITY_WAITLIST = "no_capacity_waitlist"
    INSUFFICIENT_INFORMATION = "insufficient_information"
    NO_CONSENT_FOR_THIS_SERVICE = "no_consent_for_this_service"
    CONFLICT_OF_INTEREST_SAFETY = "conflict_of_interest_safety"
    DUPLICATE_REFERRAL = "duplicate_referral"
    SERVICE_ALREADY_RECEIVED = "service_already_received"
    OTHER = "other"


class NotDeliveredReason(StrEnum):
    COULD_NOT_CONTACT = "could_not_contact"
    DECLINED_BY_VICTIM = "declined_by_victim"
    NO_LONGER_INTERESTED = "no_longer_interested"
    UNSAFE_TO_PROCEED = "unsafe_to_proceed"
    VICTIM_RELOCATED_UNKNOWN = "victim_relocated_unknown"
    VICTIM_DECEASED = "victim_deceased"
    OTHER = "other"


class Channel(StrEnum):
    """How notify reaches an agency."""

    NATS = "nats"
    WEBHOOK = "webhook"
    INBOX = "inbox"
    """No system of its own: its referrals wait in its web inbox on the board (`services/board/inbox.py`)."""


AGENCY_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
AGENCY_ID_RE = re.compile(AGENCY_ID_PATTERN)
