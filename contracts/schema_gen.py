"""JSON Schemas generated from the event models; committed under `contracts/schemas/`.

`python -m contracts.schema_gen` rewrites them; a test fails when the committed files drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from contracts.envelope import CloudEvent
from contracts.events import (
    CaseEventData,
    CaseRejectedData,
    DeadLetterData,
    EscalationData,
    FollowUpData,
    ReferralRequestedData,
    ReferralStatusData,
    ReportData,
    ResponseData,
    ResponseRefusedData,
)

SCHEMA_DIR = Path(__file__).with_name("schemas")

EVENTS: dict[str, type[BaseModel]] = {
    "alur.report.submitted.v1": CloudEvent[ReportData],
    "alur.report.followup.v1": CloudEvent[FollowUpData],
    "alur.case.registered.v1": CloudEvent[CaseEventData],
    "alur.case.updated.v1": CloudEvent[CaseEventData],
    "alur.case.rejected.v1": CloudEvent[CaseRejectedData],
    "alur.referral.requested.v1": CloudEvent[ReferralRequestedData],
    "alur.referral.status.v1": CloudEvent[ReferralStatusData],
    "alur.referral.escalated.v1": CloudEvent[EscalationData],
    "alur.referral.response.v1": CloudEvent[ResponseData],
    "alur.referral.response_refused.v1": CloudEvent[ResponseRefusedData],
    "alur.deadletter.v1": CloudEvent[DeadLetterData],
}


def render() -> dict[str, str]:
    """File name → JSON Schema text, for every event."""
    return {
        f"{name}.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
        for name, model in EVENTS.items()
    }


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(path, file=sys.stderr)
