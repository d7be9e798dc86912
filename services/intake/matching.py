"""Possible duplicates: the same victim reported by two agencies, found without identity leaving intake.

Each case yields match keys, HMAC-SHA256 digests under a secret key (`ALUR_MATCH_KEY`, `Settings.match_key`), of the NIK
and of pseudonym + age + regency. The service keeps key → case ids in KV and flags cases that share
a key; nothing is ever merged, because a false match would mix two victims' records.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable
from datetime import datetime

from contracts.events import Case
from runtime.settings import MIN_MATCH_KEY_BYTES as MIN_KEY_BYTES

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")
_CASE_ID = re.compile(r"case-[0-9a-f]{20}")


def match_keys(case: Case, key: bytes) -> list[str]:
    """`nik:<hex>` when the NIK is known, and `pav:<hex>` of pseudonym + age + regency."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the match key must be at least {MIN_KEY_BYTES} bytes")
    keys: list[str] = []
    identity = case.victim.identity
    if identity is not None and identity.nik:
        keys.append(f"nik:{_digest(key, 'nik', identity.nik)}")
    pseudonym = _normalised(case.victim.pseudonym)
    if pseudonym:
        keys.append(f"pav:{_digest(key, 'pav', pseudonym, str(case.victim.age), case.regency.value)}")
    return keys


def link(case: Case, other_case_ids: Iterable[str], now: datetime | None = None) -> Case:
    """The case with other cases that share a match key added to `possible_duplicates` (never merged)."""
    others = list(dict.fromkeys(other_case_ids))
    if not all(_CASE_ID.fullmatch(other) for other in others):
        raise ValueError("possible duplicates must be case ids")
    added = [other for other in others if other != case.case_id and other not in case.possible_duplicates]
    if not added:
        return case
    update: dict[str, object] = {
        "possible_duplicates": [*case.possible_duplicates, *added],
        "version": case.version + 1,
    }
    if now is not None:
        update["updated_at"] = now
    return case.model_copy(update=update)


def _digest(key: bytes, kind: str, *parts: str) -> str:
    return hmac.new(key, "\x1f".join((kind, *parts)).encode(), hashlib.sha256).hexdigest()


def _normalised(pseudonym: str) -> str:
    return _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", pseudonym).casefold())
