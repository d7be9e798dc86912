"""The NATS door's decisions, without a broker: which messages are an agency's own input, and the headers an
input is stored with (the live door is tested in test_security)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg

from runtime.nats_door import UNAVAILABLE, door_subject, published_by, refusal_code, stored_headers

FROM_AGENCIES = {"Nats-Request-Info": json.dumps({"acc": "AGENCIES", "rtt": 1000})}


def _msg(subject: str, headers: dict[str, str] | None) -> Msg:
    return Msg(_client=None, subject=subject, reply="_R_.a.b", data=b"{}", headers=headers)  # type: ignore[arg-type]


def test_an_agency_publish_on_its_own_subject_is_its_input() -> None:
    assert published_by(_msg(door_subject("report", "polda-kalsel"), FROM_AGENCIES), "report") == "polda-kalsel"
    assert published_by(_msg(door_subject("response", "polda-kalsel"), FROM_AGENCIES), "response") == "polda-kalsel"


def test_what_the_server_sends_to_a_reply_subject_an_agency_named_is_not() -> None:
    from_alur = {"Nats-Request-Info": json.dumps({"acc": "ALUR"})}
    pulled = _msg("alur.referral.requested.polda-kalsel", from_alur)
    assert published_by(pulled, "response") is None, "a pulled referral, under its own subject"
    assert published_by(_msg(door_subject("report", "abcdef"), from_alur), "report") is None, "an API status"
    assert published_by(_msg(door_subject("report", "polda-kalsel"), None), "report") is None
    assert published_by(_msg(door_subject("report", "polda-kalsel"), {"Nats-Request-Info": "[1"}), "report") is None
    assert published_by(_msg(door_subject("report", "polda-kalsel"), {"Nats-Request-Info": "[1]"}), "report") is None


def test_a_door_takes_only_its_own_kind() -> None:
    assert published_by(_msg(door_subject("response", "polda-kalsel"), FROM_AGENCIES), "report") is None


def test_the_stored_id_is_scoped_and_control_headers_are_dropped() -> None:
    headers = {"Nats-Msg-Id": "e1", "Nats-Expected-Last-Msg-Id": "x", "nats-rollup": "all", "Nats-TTL": "1s",
               "alur-reply-to": "_INBOX_board.responses.x", "Nats-Request-Info": "{}", "Content-Type": "a/b"}
    assert stored_headers("dinsos-kalsel", headers) == {"Nats-Msg-Id": "dinsos-kalsel:e1", "Content-Type": "a/b"}
    assert stored_headers("dinsos-kalsel", None) == {}


@given(st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=20), max_size=8),
       st.text(min_size=1, max_size=40))
def test_whatever_the_publisher_sets_the_id_is_under_its_own_scope(headers: dict[str, str], msg_id: str) -> None:
    kept = stored_headers("polres-kotabaru", headers | {"Nats-Msg-Id": msg_id})
    assert kept["Nats-Msg-Id"] == f"polres-kotabaru:{msg_id}"
    assert all(not k.lower().startswith("nats-") for k in kept if k != "Nats-Msg-Id")


def test_a_refusal_names_jetstreams_code_and_nothing_else() -> None:
    assert refusal_code(b'{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum"}}') == 400
    assert refusal_code(UNAVAILABLE) == 503
    assert refusal_code(b'{"error": "x"}') is None
    assert refusal_code(b"not json") is None
