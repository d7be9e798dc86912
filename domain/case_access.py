"""Who may amend a case (send a follow-up naming its `case_id`): the rule of docs/case-access.md, pure.

A case holds a victim's identity and account, confidential under UU 21/2007 art. 44 and "specific"
personal data under UU 27/2022 PDP; a follow-up can change them, so only those who work on the case may:

- the reporting agency (`Case.reporter`);
- every agency that holds or held a referral of the case, whatever became of it (routing's
  `case-referrals` record, `contracts.records.CaseReferrals`): it was given the case to act on, and what
  it learns (a new need, an injury, a correction) belongs on the case;
- the task-force secretariat (registry type `gt_secretariat`), which coordinates every case.

The agency must be enabled in the registry. Anyone else is told exactly what it would be told for a case
id that does not exist (`cases.case_not_found`), so a refusal never reveals that a case exists.
"""

from __future__ import annotations

from contracts.events import Case
from contracts.records import CaseReferrals
from contracts.vocab import AgencyType
from domain.registry import AgencyRegistry


def may_amend(agency_id: str, case: Case, referrals: CaseReferrals | None, registry: AgencyRegistry) -> bool:
    """Whether `agency_id` may send a follow-up to `case` (`referrals`: routing's record of it, if any)."""
    agency = registry.get(agency_id)
    if agency is None or not agency.enabled:
        return False
    if agency.type is AgencyType.GT_SECRETARIAT or agency_id == case.reporter:
        return True
    return referrals is not None and any(entry.agency == agency_id for entry in referrals.referrals.values())
