"""contracts/asyncapi.yaml: committed as generated from the apps, complete, and every reference resolves."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import pytest
import yaml

from alur.asyncapi import OUT, document, matches, render
from contracts.catalog import CASE_REJECTED, EVENTS, RESPONSE_REFUSED, TEST_EVENT


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document()


def test_the_committed_document_is_what_the_apps_generate() -> None:
    assert OUT.read_text() == render(), "contracts/asyncapi.yaml drifted from the apps: run `make docs` and commit"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    loaded = yaml.safe_load(OUT.read_text())
    for ref in _refs(loaded):
        node: Any = loaded
        for part in ref.removeprefix("#/").split("/"):
            key = unquote(part).replace("~1", "/").replace("~0", "~")
            assert key in node, f"{ref} does not resolve"
            node = node[key]


def test_every_subject_of_the_design_and_every_event_type_is_there(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    for address in ("alur.report.{agency}", "alur.response.{agency}", "alur.case.registered.{regency}",
                    "alur.case.updated.{regency}", "alur.case.rejected.{agency}", "alur.referral.requested.{agency}",
                    "alur.referral.report_rejected.{agency}", "alur.dlq.{stream}"):
        assert address in doc["channels"], address
        assert doc["channels"][address]["parameters"]
    assert set(doc["components"]["messages"]) >= set(EVENTS)
    for name in EVENTS:
        payload = doc["components"]["schemas"][name]
        assert payload["properties"]["type"]["const"] == name
        assert doc["components"]["messages"][name]["headers"] == {"$ref": "#/components/schemas/NatsHeaders"}
    assert doc["components"]["schemas"]["NatsHeaders"]["required"] == ["Nats-Msg-Id"]
    assert set(doc["components"]["securitySchemes"]) == {"nkey", "standardWebhooks"}


def test_who_publishes_and_who_consumes(doc: dict[str, Any]) -> None:
    ops = doc["operations"]
    assert ops["agency.send.alur.report.{agency}"]["action"] == "send"
    assert "intake.receive.intake.alur.report.{agency}" in ops
    assert "routing.send.alur.referral.requested.{agency}" in ops
    assert "notify.receive.notify-requests.alur.referral.requested.{agency}" in ops
    for service in ("intake", "routing", "notify"):
        assert f"{service}.send.alur.dlq.{{stream}}" in ops
    # an agency hears, on its own consumer, its answers refused and its reports rejected
    carried = {k.split(".", 3)[3] for k in ops if k.startswith("agency.receive.agency-{agency}.")}
    assert {"alur.referral.response_refused.{agency}", "alur.referral.report_rejected.{agency}",
            "alur.referral.test.{agency}", "alur.referral.requested.{agency}"} <= carried
    assert all(matches("alur.referral.*.{agency}", c) for c in carried)
    webhook = doc["channels"]["agency-webhook"]["messages"]
    assert {CASE_REJECTED, TEST_EVENT, "alur.referral.requested.v1"} <= set(webhook)
    assert RESPONSE_REFUSED not in webhook  # answered in the HTTP door's own answer


@pytest.mark.parametrize(("pattern", "subject", "expected"), [
    ("alur.referral.*.{agency}", "alur.referral.requested.{agency}", True),
    ("alur.referral.requested.*", "alur.referral.requested.{agency}", True),
    ("alur.referral.requested.*", "alur.referral.rejected.{agency}", False),
    ("alur.case.>", "alur.case.rejected.{agency}", True),
    ("alur.case.>", "alur.case", False),
    ("alur.report.*", "alur.report.{agency}.x", False),
])
def test_filters_match_subject_templates(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected
