"""The `data` of every Alur event, as strict pydantic v2 models.

Inputs from agencies (`ReportData`, `FollowUpData`, `ResponseData`) forbid unknown fields and bound
every string, so a bad report is rejected with a reason naming the field. Facts that Alur publishes
(`CaseEventData`, `ReferralRequestedData`, …) are what downstream consumers may rely on.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    field_validator,
    model_validator,
)

from contracts.vocab import (
    AGENCY_ID_PATTERN,
    AgeGroup,
    AgencyType,
    ExploitationLocation,
    ExploitationType,
    IdentificationStatus,
    Indicator,
    MigrationProfile,
    Nationality,
    Need,
    Priority,
    RecruitmentModus,
    ReferralStatus,
    Regency,
    ReportChannel,
    ResponseStatus,
    Risk,
    Service,
    Sex,
)

AgencyId = Annotated[str, StringConstraints(pattern=AGENCY_ID_PATTERN)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120)]
Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/-]{1,64}$")]
Narrative = Annotated[str, StringConstraints(max_length=5000)]
CaseId = Annotated[str, StringConstraints(pattern=r"^case-[0-9a-f]{20}$")]
ReferralId = Annotated[str, StringConstraints(pattern=r"^ref-[0-9a-f]{20}$")]

MAX_AGE = 120
CHILD_AGE_LIMIT = 18

Age = Annotated[int, Field(ge=0, le=MAX_AGE, strict=True)]


class Strict(BaseModel):
    """Input models: unknown fields are an error, so a typo is named instead of ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Fact(BaseModel):
    """Models of facts Alur publishes: tolerant readers, so a newer producer never breaks a consumer."""

    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------- reports (input)


class Identity(Strict):
    """Who the victim is. Confidential (UU 21/2007 art. 44): never logged, never in a subject."""

    name: ShortText | None = None
    nik: Annotated[str, StringConstraints(pattern=r"^\d{16}$")] | None = None
    phone: Annotated[str, StringConstraints(pattern=r"^\+?[0-9]{6,16}$")] | None = None
    birth_date: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}$")] | None = None

    @field_validator("birth_date")
    @classmethod
    def _real_date(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                date.fromisoformat(value)
            except ValueError:
                raise ValueError("must be a real calendar date YYYY-MM-DD") from None
        return value


class Victim(Strict):
    pseudonym: ShortText
    age: Age
    sex: Sex
    nationality: Nationality
    migration_profile: MigrationProfile
    disabilities: list[ShortText] = Field(default_factory=list, max_length=20)
    identity: Identity | None = None

    @property
    def age_group(self) -> AgeGroup:
        return AgeGroup.CHILD if self.age < CHILD_AGE_LIMIT else AgeGroup.ADULT


class Location(Strict):
    regency: Regency
    exploitation_location: ExploitationLocation
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None


class Consent(Strict):
    """What the victim (or guardian) agreed to share: `all`, `none`, or a list of agency types."""

    share_with: Literal["all", "none"] | Annotated[list[AgencyType], Field(min_length=1, max_length=len(AgencyType))]
    recorded_by: Annotated[str, StringConstraints(min_length=1, max_length=120)]
    recorded_at: AwareDatetime | None = None

    def covers(self, agency_type: AgencyType) -> bool:
        if self.share_with == "all":
            return True
        if self.share_with == "none":
            return False
        return agency_type in self.share_with

    @field_validator("share_with")
    @classmethod
    def _no_repeats(cls, value: str | list[AgencyType]) -> str | list[AgencyType]:
        return value if isinstance(value, str) else list(dict.fromkeys(value))


class ReportData(Strict):
    """`data` of `alur.report.submitted.v1` for a new case."""

    report_ref: Code
    channel: ReportChannel
    victim: Victim
    location: Location
    exploitation: list[ExploitationType] = Field(default_factory=list, max_length=len(ExploitationType))
    indicators: list[Indicator] = Field(default_factory=list, max_length=len(Indicator))
    needs: list[Need] = Field(default_factory=list, max_length=len(Need))
    risk: Risk = Risk.MEDIUM
    consent: Consent
    narrative: Narrative | None = None
    recruitment_modus: RecruitmentModus = RecruitmentModus.UNKNOWN
    injured: StrictBool = False
    still_in_exploitation: StrictBool = False
    has_case_manager: StrictBool = False
    identification_status: Literal[IdentificationStatus.REPORTED, IdentificationStatus.SUSPECTED] | None = None

    @field_validator("exploitation", "indicators", "needs")
    @classmethod
    def _no_repeats(cls, value: list[Any]) -> list[Any]:
        return list(dict.fromkeys(value))


class VictimUpdate(Strict):
    """A follow-up's change to the victim: only the fields given; `identity` is merged field by field."""

    pseudonym: ShortText | None = None
    age: Age | None = None
    sex: Sex | None = None
    nationality: Nationality | None = None
    migration_profile: MigrationProfile | None = None
    disabilities: list[ShortText] | None = Field(default=None, max_length=20)
    identity: Identity | None = None

    @field_validator("pseudonym", "age", "sex", "nationality", "migration_profile", "disabilities", mode="before")
    @classmethod
    def _not_cleared(cls, value: Any) -> Any:
        return _kept(value)


class LocationUpdate(Strict):
    """A follow-up's change to the location: only the fields given; `country: null` clears the country."""

    regency: Regency | None = None
    exploitation_location: ExploitationLocation | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None

    @field_validator("regency", "exploitation_location", mode="before")
    @classmethod
    def _not_cleared(cls, value: Any) -> Any:
        return _kept(value)


def _kept(value: Any) -> Any:
    if value is None:
        raise ValueError("cannot be cleared by a follow-up; omit it to keep the current value")
    return value


class FollowUpData(Strict):
    """`data` of `alur.report.submitted.v1` for a follow-up: `case_id` plus only what changed.

    Omitted fields keep their value; `null` clears only a field that is optional on the case
    (`narrative`, `location.country`, `victim.identity` and its fields), never a required one.
    """

    report_ref: Code
    case_id: CaseId
    channel: ReportChannel | None = None
    victim: VictimUpdate | None = None
    location: LocationUpdate | None = None
    exploitation: list[ExploitationType] | None = Field(default=None, max_length=len(ExploitationType))
    indicators: list[Indicator] | None = Field(default=None, max_length=len(Indicator))
    needs: list[Need] | None = Field(default=None, max_length=len(Need))
    risk: Risk | None = None
    consent: Consent | None = None
    narrative: Narrative | None = None
    recruitment_modus: RecruitmentModus | None = None
    injured: StrictBool | None = None
    still_in_exploitation: StrictBool | None = None
    has_case_manager: StrictBool | None = None
    identification_status: IdentificationStatus | None = None

    @field_validator(
        "channel",
        "victim",
        "location",
        "exploitation",
        "indicators",
        "needs",
        "risk",
        "consent",
        "recruitment_modus",
        "injured",
        "still_in_exploitation",
        "has_case_manager",
        "identification_status",
        mode="before",
    )
    @classmethod
    def _not_cleared(cls, value: Any) -> Any:
        return _kept(value)

    @field_validator("exploitation", "indicators", "needs")
    @classmethod
    def _no_repeats(cls, value: list[Any] | None) -> list[Any] | None:
        return None if value is None else list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _changes_something(self) -> FollowUpData:
        if not self.model_fields_set - {"report_ref", "case_id"}:
            raise ValueError("a follow-up must carry at least one changed field besides report_ref and case_id")
        return self


# ---------------------------------------------------------------- cases (facts)


class Screening(Fact):
    """The screening result intake derives from the coded indicators."""

    indicators: list[Indicator] = Field(default_factory=list)
    forced_labour_indicators: int = 0
    legal_elements: dict[str, bool] = Field(default_factory=dict)
    result: Literal["likely_trafficking", "possible_trafficking", "insufficient_information"]
    risk: Risk
    risk_raised_because: list[str] = Field(default_factory=list)


class Case(Fact):
    """The validated case, as intake keeps it in KV and publishes it on CASES."""

    case_id: CaseId
    reporter: AgencyId
    report_refs: list[str]
    channel: ReportChannel
    regency: Regency
    victim: Victim
    age_group: AgeGroup
    location: Location
    exploitation: list[ExploitationType]
    indicators: list[Indicator]
    needs: list[Need]
    risk: Risk
    consent: Consent
    narrative: Narrative | None = None
    recruitment_modus: RecruitmentModus = RecruitmentModus.UNKNOWN
    injured: bool = False
    still_in_exploitation: bool = False
    has_case_manager: bool = False
    identification_status: IdentificationStatus = IdentificationStatus.REPORTED
    screening: Screening | None = None
    possible_duplicates: list[CaseId] = Field(default_factory=list)
    registered_at: AwareDatetime
    updated_at: AwareDatetime
    version: int = 1


class CaseEventData(Fact):
    """`data` of `alur.case.registered.v1` and `alur.case.updated.v1`."""

    case_id: CaseId
    report_ref: str
    reporter: AgencyId
    regency: Regency
    case: Case
    changed: list[str] = Field(default_factory=list)


class CaseRejectedData(Fact):
    """`data` of `alur.case.rejected.v1`: each reason names the field and what is wrong with it."""

    report_ref: str | None = None
    reporter: str
    event_id: str | None = None
    reasons: list[str] = Field(min_length=1)
    stream_seq: int | None = None


# ---------------------------------------------------------------- referrals (facts)


class RuleReason(Fact):
    """Why a referral exists: one fired rule with its legal basis."""

    rule_id: str
    description: str
    legal_basis: str
    override: bool = False


class ReferralRequestedData(Fact):
    """`data` of `alur.referral.requested.v1`."""

    referral_id: ReferralId
    case_id: CaseId
    agency: AgencyId
    agency_type: AgencyType
    service: Service
    priority: Priority
    due: AwareDatetime
    reasons: list[RuleReason] = Field(min_length=1)
    ruleset_version: str
    case: dict[str, Any]
    regency: Regency | None = None
    sla_hours: float | None = None
    statutory_clock: str | None = None
    replaces: ReferralId | None = None
    resolution: str | None = None
    requested_at: AwareDatetime | None = None


class ReferralStatusData(Fact):
    """`data` of every later referral status event (`delivered`, `acknowledged`, … `expired`)."""

    referral_id: ReferralId
    case_id: CaseId
    agency: AgencyId
    status: ReferralStatus
    reason: str | None = None
    note: Annotated[str, StringConstraints(max_length=2000)] | None = None
    redirect_to: AgencyId | None = None
    service: Service | None = None
    agency_type: AgencyType | None = None
    at: AwareDatetime | None = None


class EscalationData(Fact):
    """`data` of `alur.referral.reminded.v1` and `alur.referral.escalated.v1`."""

    referral_id: ReferralId
    case_id: CaseId
    agency: AgencyId
    status: Literal["reminded", "escalated"]
    level: int = Field(ge=1)
    action: Literal["remind", "raise", "expire"]
    target: str
    overdue: str
    due: AwareDatetime
    notify: list[AgencyId] = Field(default_factory=list)
    reason: str


class ResponseData(Strict):
    """`data` of `alur.referral.response.v1`, what an agency answers about a referral it holds."""

    referral_id: ReferralId
    status: ResponseStatus
    reason: Code | None = None
    note: Annotated[str, StringConstraints(max_length=2000)] | None = None
    redirect_to: AgencyId | None = None

    @model_validator(mode="after")
    def _redirect_names_agency(self) -> ResponseData:
        if self.status is ResponseStatus.REDIRECTED and not (self.redirect_to or self.reason):
            raise ValueError("redirected needs `redirect_to` (the agency id) or a `reason`")
        return self


class ResponseRefusedData(Fact):
    """`data` of `alur.referral.response_refused.v1`."""

    referral_id: str | None = None
    agency: str
    status: str | None = None
    reason: str
    code: Literal["wrong_agency", "impossible_transition", "bad_body", "unknown_referral"]


# ---------------------------------------------------------------- dead letters


class DeadLetterData(Fact):
    """`data` of `alur.deadletter.v1`: where the failed message lies and why, never its content."""

    stream: str
    consumer: str
    subject: str
    stream_seq: int
    deliveries: int
    error: str
    service: str
    failed_at: datetime
