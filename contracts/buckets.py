"""The KV buckets of DESIGN.md's topology, by name: who writes each, and the record it holds (`records`).

`deploy/topology.yaml` declares them (a test keeps the two equal); code names a bucket only through here.
"""

from __future__ import annotations

from enum import StrEnum


class Bucket(StrEnum):
    """Every KV bucket; the value is the bucket's name on the broker."""

    REGISTRY = "registry"
    """`alur agency …` and `alur up`: one `records.Agency` per agency id. Every service watches it."""
    CREDENTIALS = "credentials"
    """`alur up`: `records.AgencyCredential` under `agency.<id>`, the agency id under `token.<sha256>`."""
    CASES = "cases"
    """intake: the validated `events.Case` by case id. Routing reads it to reroute."""
    MATCHES = "matches"
    """intake: keyed identity hash → `records.CaseIds` sharing it (possible duplicate victims)."""
    REGIONS = "regions"
    """intake: `records.RegionMonth` under `<regency>.<YYYY-MM>` (the early-warning counters), and the first
    month counted under `since`."""
    DECISIONS = "decisions"
    """routing: `records.DecisionRecord` by case id, one revision per decision (the trace reads the history)."""
    CASE_REFERRALS = "case-referrals"
    """routing: `records.CaseReferrals` by case id. Notify and the ops views read it."""
    REFERRALS = "referrals"
    """notify: the referral's state by referral id (`records.ReferralRecord` is what others may read)."""
    INSTANCES = "instances"
    """every service: one `records.InstanceRecord` per running instance, refreshed every few seconds, dropped
    by the bucket's age limit once the instance stops; `alur status` lists them with their readiness."""
