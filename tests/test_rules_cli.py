"""`alur rules check|test|explain` as an operator runs them: the real command, its exit code and output.

No broker is needed. Broken packs are temporary copies of deploy/kalsel with one change each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CONFIDENTIAL, REFERENCE_REPORT, REPO, reference_report

PROFILE = REPO / "deploy" / "kalsel"
VERSION = "kalsel-2026.1"


def rules(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALUR_")} | {"COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "alur.cli", "rules", *args], env=env, cwd=REPO, text=True,
                          capture_output=True, timeout=60)


def profile_with(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the Kalsel profile whose rules.yaml has `old` replaced (once) by `new`."""
    profile = tmp_path / "profile"
    shutil.copytree(PROFILE, profile)
    text = (profile / "rules.yaml").read_text(encoding="utf-8")
    assert old in text
    (profile / "rules.yaml").write_text(text.replace(old, new, 1), encoding="utf-8")
    return profile


def case_file(tmp_path: Path, body: dict[str, Any], name: str = "case.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


# ---------------------------------------------------------------- check


def test_check_accepts_the_kalsel_pack() -> None:
    result = rules("check")
    assert result.returncode == 0, result.stderr
    assert f"ok rule pack {VERSION}" in result.stdout
    assert "26 rules" in result.stdout and "35 test cases" in result.stdout


def test_check_refuses_a_bad_pack_naming_every_rule_at_fault(tmp_path: Path) -> None:
    profile = profile_with(tmp_path, "when: child\n    mandatory: true", "when: child &&\n    mandatory: true")
    text = (profile / "rules.yaml").read_text(encoding="utf-8")
    (profile / "rules.yaml").write_text(
        text.replace("{agency_type: labour, service:", "{agency_type: labor, service:", 1), encoding="utf-8")
    result = rules("check", "--pack", str(profile))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "refused" in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert any("uptd-ppa-child" in p and "does not compile" in p for p in problems), result.stderr
    assert any("labour-inspection" in p and "labor" in p for p in problems), result.stderr


def test_check_refuses_unreadable_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("version: x\nrules: [\n", encoding="utf-8")
    shutil.copy(PROFILE / "views.yaml", tmp_path / "views.yaml")
    result = rules("check", "--pack", str(bad))
    assert result.returncode == 1 and "refused" in result.stderr


# ---------------------------------------------------------------- test


def test_test_runs_every_case_of_the_pack() -> None:
    result = rules("test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "35 passed, 0 failed" in result.stdout
    assert "FAIL" not in result.stdout
    assert "reference report" in result.stdout


def test_test_fails_when_a_rule_change_breaks_a_case(tmp_path: Path) -> None:
    profile = profile_with(tmp_path, "when: child\n    mandatory: true", "when: child && false\n    mandatory: true")
    result = rules("test", "--pack", str(profile / "rules.yaml"))
    assert result.returncode == 1
    assert "FAIL" in result.stdout and " 0 failed" not in result.stdout
    assert "a child goes to UPTD PPA at high priority" in result.stdout
    assert "uptd_ppa/case_management: not made" in result.stdout
    assert "rules no test fires:" in result.stdout and "uptd-ppa-child" in result.stdout


# ---------------------------------------------------------------- explain


def test_explain_json_gives_the_referrals_their_reasons_and_the_rules_that_did_not_fire(tmp_path: Path) -> None:
    result = rules("explain", str(case_file(tmp_path, REFERENCE_REPORT)), "--json")
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["ruleset_version"] == VERSION and decision["input_hash"].startswith("sha256:")
    by_target = {(r["agency_type"], r["service"]): r for r in decision["referrals"]}
    assert {"uptd_ppa", "police", "health", "migrant_worker_protection", "social_services"} <= {
        t for t, _ in by_target}
    uptd = by_target[("uptd_ppa", "case_management")]
    assert uptd["agency"] == "uptd-ppa-banjarmasin" and uptd["priority"] == "high"
    assert [r["rule_id"] for r in uptd["reasons"]] == ["uptd-ppa-child", "uptd-ppa-female"]
    assert all(r["legal_basis"] for r in uptd["reasons"])
    assert "narrative" in uptd["view_fields"]
    assert "narrative" not in by_target[("health", "medical")]["view_fields"]
    fired = {t["rule_id"] for t in decision["trace"] if t["fired"]}
    assert fired.isdisjoint(decision["not_fired"]) and "labour-inspection" in decision["not_fired"]
    assert all(t["why"] for t in decision["trace"])
    assert decision["withheld"] == []
    for secret in CONFIDENTIAL:  # views are listed by field name, never by value
        assert secret not in result.stdout


def test_explain_json_shows_consent_gaps_and_mandated_overrides(tmp_path: Path) -> None:
    body = reference_report(consent={"share_with": "none", "recorded_by": "bp3mi-kalsel/officer-17"})["data"]
    result = rules("explain", str(case_file(tmp_path, body)), "--json")  # only the `data` object
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    made = {(r["agency_type"], r["service"]): r for r in decision["referrals"]}
    assert set(made) == {("uptd_ppa", "case_management"), ("police", "investigation")}  # a child: by law
    for referral in made.values():
        assert [r["rule_id"] for r in referral["reasons"] if r["override"]] in (["uptd-ppa-child"], ["police-child"])
    withheld = {(w["agency_type"], w["service"]): w["reason"] for w in decision["withheld"]}
    assert withheld[("health", "medical")] == "consent does not cover health (share_with: none)"


def test_explain_text_is_readable_for_a_coordinator(tmp_path: Path) -> None:
    result = rules("explain", str(case_file(tmp_path, REFERENCE_REPORT)))
    assert result.returncode == 0, result.stderr
    assert f"under rule pack {VERSION}" in result.stdout
    assert "uptd-ppa-child" in result.stdout and "legal basis: UU 35/2014" in result.stdout
    assert "labour-inspection" in result.stdout  # among the rules that did not fire, with why
    for secret in CONFIDENTIAL:
        assert secret not in result.stdout


@pytest.mark.parametrize(("body", "expected"), [
    ({"report_ref": "X-1", "victim": {"age": -3}}, "age"),
    ([1, 2], "expected a JSON object"),
])
def test_explain_refuses_a_case_that_does_not_validate(tmp_path: Path, body: Any, expected: str) -> None:
    result = rules("explain", str(case_file(tmp_path, body)), "--json")
    assert result.returncode == 1 and result.stdout == ""
    assert expected in result.stderr


def test_explain_refuses_a_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "case.json"
    path.write_text("{not json", encoding="utf-8")
    result = rules("explain", str(path))
    assert result.returncode == 1 and "cannot read" in result.stderr


def test_explain_uses_the_pack_given(tmp_path: Path) -> None:
    profile = profile_with(tmp_path, f"version: {VERSION}", "version: kalsel-2026.9-trial")
    result = rules("explain", str(case_file(tmp_path, REFERENCE_REPORT)), "--pack", str(profile), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ruleset_version"] == "kalsel-2026.9-trial"
