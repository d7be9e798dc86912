"""The `data` of every Alur event, as strict pydantic v2 models.

Inputs from agencies (`ReportData`, `FollowUpData`, `ResponseData`) forbid unknown fields and bound
every string, so a bad report is rejected with a reason naming the field. Facts that Alur publishes
(`CaseEventData`, `ReferralRequestedData`, …) are what downstream consumers may rely on.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
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

CONTROL_CHARACTERS = frozenset(
    {*map(chr, range(0x00, 0x20)), chr(0x7F), *map(chr, range(0x80, 0xA0))}
)
"""C0 controls, DEL and C1 controls: invisible, they end strings in C code, break log lines and terminals."""
BIDI_CONTROLS = frozenset(
    {"\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}
)
"""Unicode bidirectional formatting (LRM/RLM/ALM, embeddings, overrides, isolates): they make a text read
differently from what it holds (a right-to-left override turns `KS-0412` around on screen)."""
LINE_BREAKS = frozenset({"\t", "\n", "\r"})
"""What a narrative may hold of the controls: tabs and line breaks (a web form's CRLF included)."""


def _plain_text(allowed: frozenset[str] = frozenset()) -> AfterValidator:
    """Refuse control and bidi characters in a text field; the reason names the code point, never the text."""

    def check(value: str) -> str:
        for char in value:
            if (char in CONTROL_CHARACTERS and char not in allowed) or char in BIDI_CONTROLS:
                kind = "a bidirectional formatting character" if char in BIDI_CONTROLS else "a control character"
                raise ValueError(f"must not contain {kind} (U+{ord(char):04X})")
        return value

    return AfterValidator(check)


AgencyId = Annotated[str, StringConstraints(pattern=AGENCY_ID_PATTERN)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120), _plain_text()]
"""A short free text (a pseudonym, a name, a disability): one line, no control or bidi characters."""
Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/-]{1,64}$")]
Narrative = Annotated[str, StringConstraints(max_length=5000), _plain_text(LINE_BREAKS)]
"""The victim's account: several lines allowed; other control characters and bidi controls are not."""
Note = Annotated[str, StringConstraints(max_length=2000), _plain_text(LINE_BREAKS)]
"""An agency's note on a referral: like a narrative, shorter."""
CASE_ID_PATTERN = r"^case-[0-9a-f]{20}$"
REFERRAL_ID_PATTERN = r"^ref-[0-9a-f]{20}$"
CaseId = Annotated[str, StringConstraints(pattern=CASE_ID_PATTERN)]
ReferralId = Annotated[str, StringConstraints(pattern=REFERRAL_ID_PATTERN)]

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
    nik: Annotated[str, StringConstraints(pattern=r"^[0-9]{16}$")] | None = None
    phone: Annotated[str, StringConstraints(pattern=r"^\+?[0-9]{6,16}$")] | None = None
    birth_date: Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")] | None = None

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
    recorded_by: Annotated[str, StringConstraints(min_length=1, max_length=120), _plain_text()]
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
    warnings: list[str] = Field(default_factory=list)
    """What intake kept but doubts, from every report of the case: each names the field (e.g. `time: …`),
    never what it holds. The coordinator checks them with the reporting agency."""
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
    warnings: list[str] = Field(default_factory=list)
    """The warnings of the report that made this change (the case keeps those of all its reports)."""


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
    response_id: str | None = None
    """The `id` of the agency's response this status records, when an agency set it."""


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


Actor = Literal["agency", "referrer", "system"]
"""Who moved a referral: the agency holding it, the referrer side (routing, the coordinator), or notify itself."""


class HistoryEntry(Fact):
    """One recorded status (or, with the status unchanged, one progress note from the agency)."""

    status: ReferralStatus
    at: AwareDatetime
    actor: Actor
    reason: str | None = None
    note: str | None = None
    redirect_to: str | None = None


class Outcome(HistoryEntry):
    """How a referral closed (its terminal history entry), for the coordinator's closed loop."""


class OutcomeData(Fact):
    """`data` of `alur.referral.outcome.v1`, to the coordinator: how one referral closed, and whether every
    referral of its case now has an outcome (the closed loop)."""

    referral_id: ReferralId
    case_id: CaseId
    agency: AgencyId
    service: Service
    status: ReferralStatus
    outcome: Outcome | None = None
    all_referrals_terminal: bool
    open_referrals: list[ReferralId] = Field(default_factory=list)


class ResponseData(Strict):
    """`data` of `alur.referral.response.v1`, what an agency answers about a referral it holds."""

    referral_id: ReferralId
    status: ResponseStatus
    reason: Code | None = None
    note: Note | None = None
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
    code: Literal["wrong_agency", "impossible_transition", "bad_body", "unknown_referral", "note_limit"]
    """`unknown_referral` for a referral the sender does not hold, whether it exists or not (the holder is
    never named); `note_limit` when the referral has all the progress notes it keeps. `wrong_agency` is no
    longer sent (kept so older readers' schemas stay valid)."""
    response_id: str | None = None
    """The `id` of the refused response (when it could be read), so the sender can match the two."""


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


# ---------------------------------------------------------------- early warning


class RegionFlaggedData(Fact):
    """`data` of `alur.region.flagged.v1`: a regency's month rose past its own baseline.

    `dimension` is `cases` (all cases, `value` "all"), `exploitation` or `modus`. The baseline is the six
    months before `month`; its figures are withheld (None) when those months hold fewer than
    `min_group` cases together, so no figure ever stands for a group smaller than 10. Never a case id.
    """

    regency: Regency
    regency_name: str
    month: str = Field(pattern=r"^\d{4}-\d{2}$")
    dimension: Literal["cases", "exploitation", "modus"]
    value: str
    cases: int = Field(ge=10)
    baseline_months: list[str]
    baseline_cases: int | None = None
    """Cases in the six baseline months together; None when fewer than `min_group`."""
    baseline_mean: float | None = None
    """Cases per baseline month; None when withheld with `baseline_cases`."""
    upper_bound: int | None = None
    """The most cases a month may have before it flags: the 97.5% quantile of a Poisson with the baseline
    mean. None when withheld with `baseline_cases` (it would give the small baseline away)."""
    level: float = 0.975
    min_group: int = 10


# ---------------------------------------------------------------- conformance checks


class TestEventData(Fact):
    """`data` of `alur.test.v1`: sent by `alur agency check` to an agency's consumer or webhook.

    It concerns no case and no referral, and no service reads it: a receiver acknowledges it (NATS) or
    answers 2xx (webhook) and does nothing else.
    """

    __test__ = False  # not a pytest test class, whatever its name

    agency: str
    check: str
    """Which check sent it (`nats_pull` or `webhook_signed`), so a receiver's logs can say."""
    nonce: str
    """Random per check run: the check knows its own event among whatever else the consumer holds."""
