"""Every CloudEvents `type` that crosses the bus, with the model of its `data`: the one list of event types.

Publishers take their type from here, `schema_gen` writes one JSON Schema per entry, and a test checks
that every event the running services publish has its type here and validates against its schema.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import BaseModel, create_model

from contracts.envelope import CloudEvent, event_type
from contracts.events import (
    CaseEventData,
    CaseRejectedData,
    DeadLetterData,
    EscalationData,
    FollowUpData,
    OutcomeData,
    ReferralRequestedData,
    ReferralStatusData,
    RegionFlaggedData,
    ReportData,
    ResponseData,
    ResponseRefusedData,
    TestEventData,
)
from contracts.vocab import ReferralStatus

REPORT_SUBMITTED = event_type("report", "submitted")
REPORT_FOLLOWUP = event_type("report", "followup")
CASE_REGISTERED = event_type("case", "registered")
CASE_UPDATED = event_type("case", "updated")
CASE_REJECTED = event_type("case", "rejected")
REFERRAL_REQUESTED = event_type("referral", "requested")
REFERRAL_REMINDED = event_type("referral", "reminded")
REFERRAL_ESCALATED = event_type("referral", "escalated")
REFERRAL_OUTCOME = event_type("referral", "outcome")
REFERRAL_RESPONSE = event_type("referral", "response")
RESPONSE_REFUSED = event_type("referral", "response_refused")
REGION_FLAGGED = event_type("region", "flagged")
DEADLETTER = "alur.deadletter.v1"
TEST_EVENT = "alur.test.v1"
"""The conformance check's test event (`alur agency check`): no service treats it as anything."""

STATUS_EVENTS = tuple(s for s in ReferralStatus if s is not ReferralStatus.REQUESTED)
"""The statuses that notify states as `alur.referral.<status>.v1` with `ReferralStatusData`."""


def referral_status_type(status: ReferralStatus | str) -> str:
    """`alur.referral.<status>.v1` for a status after `requested`."""
    return event_type("referral", ReferralStatus(status).value)


EVENTS: dict[str, type[BaseModel]] = {
    REPORT_SUBMITTED: ReportData,
    REPORT_FOLLOWUP: FollowUpData,
    REFERRAL_RESPONSE: ResponseData,
    CASE_REGISTERED: CaseEventData,
    CASE_UPDATED: CaseEventData,
    CASE_REJECTED: CaseRejectedData,
    REFERRAL_REQUESTED: ReferralRequestedData,
    **{referral_status_type(status): ReferralStatusData for status in STATUS_EVENTS},
    REFERRAL_REMINDED: EscalationData,
    REFERRAL_ESCALATED: EscalationData,
    REFERRAL_OUTCOME: OutcomeData,
    RESPONSE_REFUSED: ResponseRefusedData,
    REGION_FLAGGED: RegionFlaggedData,
    DEADLETTER: DeadLetterData,
    TEST_EVENT: TestEventData,
}
"""Type → the model of its `data`. Inputs from agencies first (reports, responses), then Alur's facts."""


@cache
def envelope_model(name: str) -> type[BaseModel]:
    """The model of a whole event of type `name`: the CloudEvent around its data model, `type` pinned to it.

    Named after the type, so its JSON Schema (`schema_gen`, the AsyncAPI document) is titled by it too.
    """
    data = EVENTS[name]
    return create_model(name, __base__=CloudEvent[data], type=(Literal[name], ...))  # type: ignore[valid-type, call-overload]
