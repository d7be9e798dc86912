"""The board's read model and views, without a broker: folding events, need-to-know, deadlines, records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from contracts.records import CaseReferrals, WithheldReferral
from contracts.vocab import AgencyType, Service
from domain.escalation_policy import load_policy
from runtime.settings import PROFILE_DIR
from services.board import pages, views
from services.board.model import BoardModel
from services.board.sessions import Sessions, Viewer
from tests.conftest import CONFIDENTIAL, REFERENCE_REPORT

T0 = datetime(2026, 11, 20, 0, 15, tzinfo=UTC)
CASE = "case-" + "a" * 20
REF = "ref-" + "b" * 20
REF2 = "ref-" + "c" * 20
POLICY = load_policy(PROFILE_DIR / "escalation.yaml", scale=1.0)


def event(data: dict[str, Any], at: datetime) -> bytes:
    return json.dumps({"specversion": "1.0", "id": "x", "source": "test", "type": "t", "time": at.isoformat(),
                       "data": data}).encode()


def case_event(at: datetime = T0, version: int = 1, case_id: str = CASE) -> bytes:
    report = REFERENCE_REPORT["data"]
    case = {**report, "case_id": case_id, "reporter": "bp3mi-kalsel", "report_refs": [report["report_ref"]],
            "regency": "6371", "age_group": "child", "registered_at": at.isoformat(), "updated_at": at.isoformat(),
            "version": version, "possible_duplicates": ["case-" + "d" * 20]}
    return event({"case_id": case_id, "report_ref": report["report_ref"], "reporter": "bp3mi-kalsel",
                  "regency": "6371", "case": case}, at)


def requested(rid: str = REF, agency: str = "polda-kalsel", at: datetime = T0, replaces: str | None = None,
              service: str = "investigation") -> bytes:
    return event({"referral_id": rid, "case_id": CASE, "agency": agency, "agency_type": "police", "service": service,
                  "priority": "high", "due": (at + timedelta(hours=1)).isoformat(), "ruleset_version": "v1",
                  "reasons": [{"rule_id": "police-always", "description": "always", "legal_basis": "UU 21/2007"}],
                  "case": {"victim": REFERENCE_REPORT["data"]["victim"], "narrative": REFERENCE_REPORT["data"]["narrative"]},
                  "requested_at": at.isoformat(), "replaces": replaces}, at)


def status(verb: str, at: datetime, rid: str = REF, agency: str = "polda-kalsel", **extra: Any) -> bytes:
    return event({"referral_id": rid, "case_id": CASE, "agency": agency, "status": verb, "at": at.isoformat(),
                  **extra}, at)


def escalation(level: int, action: str, at: datetime) -> bytes:
    return event({"referral_id": REF, "case_id": CASE, "agency": "polda-kalsel",
                  "status": "reminded" if action == "remind" else "escalated", "level": level, "action": action,
                  "target": "coordinator", "overdue": "ack", "due": (T0 + timedelta(hours=1)).isoformat(),
                  "reason": "acknowledgement was due"}, at)


def folded() -> BoardModel:
    model = BoardModel()
    model.apply("alur.case.registered.6371", case_event())
    model.apply("alur.referral.requested.polda-kalsel", requested())
    model.apply("alur.referral.delivered.polda-kalsel", status("delivered", T0 + timedelta(seconds=2)))
    return model


def test_need_to_know_nothing_of_identity_or_narrative_is_kept_or_shown() -> None:
    model = folded()
    model.apply("alur.referral.escalated.polda-kalsel", escalation(2, "raise", T0 + timedelta(hours=2)))
    now = T0 + timedelta(hours=3)
    shown = json.dumps([views.open_referrals(model, POLICY, now), views.timeline(model, CASE),
                        views.agency_records(model), model.duplicates()])
    shown += pages.case("en", views.timeline(model, CASE), CASE)
    shown += pages.referrals("id", views.open_referrals(model, POLICY, now), now)
    shown += repr(model.cases) + repr(model.referrals)
    for secret in CONFIDENTIAL:
        assert secret not in shown
    assert "KS-0412" in shown


def test_a_referral_is_overdue_and_escalated_first_with_its_running_deadline() -> None:
    model = folded()
    model.apply("alur.referral.requested.dinkes-kalsel", requested(REF2, "dinkes-kalsel", service="medical"))
    model.apply("alur.referral.acknowledged.dinkes-kalsel",
                status("acknowledged", T0 + timedelta(minutes=5), REF2, "dinkes-kalsel"))
    model.apply("alur.referral.escalated.polda-kalsel", escalation(2, "raise", T0 + timedelta(hours=2)))
    rows = views.open_referrals(model, POLICY, T0 + timedelta(hours=2))
    assert [r["referral_id"] for r in rows] == [REF, REF2]
    late, waiting = rows
    assert late["overdue"] and late["escalation_level"] == 2 and late["deadline"]["kind"] == "acknowledge"
    assert not waiting["overdue"] and waiting["deadline"]["kind"] == "decide"
    assert waiting["deadline"]["due"] == (T0 + timedelta(minutes=5, hours=48)).isoformat()
    clocks = [d["clock"] for d in waiting["deadlines"] if d["kind"] == "statutory"]
    assert clocks == ["first_aid_7d"]


def test_timeline_tells_reroutes_outcomes_and_withheld_referrals() -> None:
    model = folded()
    model.apply("alur.referral.rejected.polda-kalsel",
                status("rejected", T0 + timedelta(minutes=3), reason="out_of_mandate"))
    model.apply("alur.referral.requested.polres-banjar", requested(REF2, "polres-banjar", T0 + timedelta(minutes=4),
                                                                 replaces=REF))
    model.apply("alur.referral.completed.polres-banjar",
                status("completed", T0 + timedelta(days=2), REF2, "polres-banjar", reason="services_provided",
                       note="Siti A. was seen"))
    record = CaseReferrals(case_id=CASE, withheld=[WithheldReferral(
        agency_type=AgencyType.EDUCATION, service=Service.EDUCATION, reason="no consent", rule_ids=["edu"])])
    assert model.withheld(CASE, record.model_dump_json().encode())
    view = views.timeline(model, CASE)
    assert view is not None
    kinds = [e["kind"] for e in view["events"]]
    assert kinds == ["reported", "referred", "delivered", "rejected", "rerouted", "completed"]
    assert view["events"][1]["rules"] == [{"rule_id": "police-always", "legal_basis": "UU 21/2007"}]
    assert model.referrals[REF].rerouted_to == REF2
    assert view["withheld"][0]["agency_type"] == "education"
    assert view["all_referrals_terminal"]
    assert "Siti A." not in json.dumps(view)  # an agency's free-text note is not shown
    record_of = {r["agency"]: r for r in views.agency_records(model)}
    assert record_of["polda-kalsel"]["rejections"] == {"out_of_mandate": 1}
    assert record_of["polres-banjar"]["outcome_share"] == 1.0


def test_events_that_do_not_read_are_skipped_and_replays_change_nothing() -> None:
    model = folded()
    version = model.version
    assert not model.apply("alur.referral.requested.polda-kalsel", requested())
    assert not model.apply("alur.referral.delivered.polda-kalsel", status("delivered", T0))
    assert not model.apply("alur.referral.accepted.polda-kalsel", b"{not json")
    assert not model.apply("alur.case.registered.6371", case_event())
    assert model.version == version and model.skipped == 1


def test_a_case_heard_of_through_its_referral_first_is_filled_in_later() -> None:
    model = BoardModel()
    model.apply("alur.referral.requested.polda-kalsel", requested())
    model.apply("alur.case.registered.6371", case_event())
    view = views.timeline(model, CASE)
    assert view is not None and view["pseudonym"] == "KS-0412"
    assert sorted(e["kind"] for e in view["events"]) == ["referred", "reported"]
    assert model.duplicates() == [sorted([CASE, "case-" + "d" * 20])]


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=50),
       st.floats(min_value=0, max_value=100))
def test_percentile_is_one_of_the_values_and_grows_with_q(values: list[float], q: float) -> None:
    p = views.percentile(values, q)
    assert p in values
    assert views.percentile(values, 100) == max(values)
    assert p <= (views.percentile(values, min(100.0, q + 10)) or 0)
    assert views.percentile([], q) is None


def test_sessions_expire_and_close() -> None:
    now = [0.0]
    sessions = Sessions(ttl=10, clock=lambda: now[0])
    sid = sessions.open(Viewer("gt-kalsel", AgencyType.GT_SECRETARIAT))
    viewer = sessions.viewer(sid)
    assert viewer is not None and viewer.coordinator
    assert sessions.viewer("forged") is None and sessions.viewer(None) is None
    now[0] = 11
    assert sessions.viewer(sid) is None
    other = sessions.open(Viewer("polda-kalsel", AgencyType.POLICE))
    assert not sessions.viewer(other).coordinator  # type: ignore[union-attr]
    sessions.close(other)
    assert sessions.viewer(other) is None


def test_regions_show_groups_of_ten_or_more_and_intakes_early_warnings() -> None:
    model = BoardModel()
    for n in range(9):
        model.apply("alur.case.registered.6371", case_event(case_id=f"case-{n:020x}"))
    assert views.region_rows(model) == []
    model.apply("alur.case.registered.6371", case_event(case_id=f"case-{9:020x}"))
    model.apply("alur.case.updated.6371", case_event(case_id=f"case-{9:020x}", version=2))  # counted once
    rows = views.region_rows(model)
    assert {(r["dimension"], r["value"], r["cases"]) for r in rows} >= {("cases", "all", 10)}
    flag = {"regency": "6371", "regency_name": "Kota Banjarmasin", "month": "2026-11", "dimension": "cases",
            "value": "all", "cases": 12, "baseline_months": ["2026-05"], "upper_bound": 5}
    assert model.apply("alur.region.flagged.6371", event(flag, T0))
    page = pages.regions("id", rows, 10, list(model.region_flags.values()))
    assert "<svg" in page and "Kota Banjarmasin" in page and "Peringatan dini" in page
