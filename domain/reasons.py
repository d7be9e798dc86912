"""Why a report is refused: one reason per problem, naming the field and what is wrong with it.

A reason never carries what the reporter typed into an identity or narrative field. Only a short
code given for a code field (a need, an indicator, a regency …) is quoted back, and only when it
cannot be a NIK or a phone number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from contracts.events import MAX_AGE, FollowUpData, ReportData
from contracts.vocab import (
    AgencyType,
    ExploitationLocation,
    ExploitationType,
    IdentificationStatus,
    Indicator,
    MigrationProfile,
    Nationality,
    Need,
    RecruitmentModus,
    Regency,
    ReportChannel,
    Risk,
    Sex,
)

Loc = Sequence[str | int]

SAFE_CODE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
DIGIT_RUN = re.compile(r"\d{7,}")
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

CODE_FIELDS: dict[str, tuple[str, type[StrEnum]]] = {
    "channel": ("channel", ReportChannel),
    "needs": ("need", Need),
    "exploitation": ("exploitation type", ExploitationType),
    "indicators": ("indicator", Indicator),
    "regency": ("regency code", Regency),
    "exploitation_location": ("exploitation location", ExploitationLocation),
    "sex": ("sex", Sex),
    "nationality": ("nationality", Nationality),
    "migration_profile": ("migration profile", MigrationProfile),
    "risk": ("risk", Risk),
    "recruitment_modus": ("recruitment modus", RecruitmentModus),
    "identification_status": ("identification status", IdentificationStatus),
    "share_with": ("agency type", AgencyType),
}
"""Fields whose value is a code from the vocabulary: the only ones whose value may be quoted back."""

ECHO_FIELDS = frozenset(CODE_FIELDS) | {"country", "specversion", "type", "datacontenttype"}

FORMATS: dict[str, str] = {
    "nik": "must be 16 digits",
    "phone": "must be 6 to 16 digits, optionally after a leading +",
    "birth_date": "must be a date YYYY-MM-DD",
    "country": "must be an ISO 3166-1 alpha-2 code in capitals, such as MY",
    "report_ref": "must be 1 to 64 letters, digits or _ . : / -",
    "case_id": "must be 'case-' followed by 20 lowercase hex digits",
    "type": "must be lowercase letters, digits, _ and .",
}

BOUNDS: dict[str, tuple[int, int]] = {"age": (0, MAX_AGE)}

UNION_HINTS: dict[str, str] = {
    "share_with": "must be 'all', 'none' or a non-empty list of agency types",
}

_ENUM_REPR = re.compile(r"<[A-Za-z_.]+: ('[^']*')>")


def safe_code(value: object) -> str | None:
    """`value` when it is a short code that may be quoted in a reason, else None."""
    if isinstance(value, str) and SAFE_CODE.fullmatch(value) and not DIGIT_RUN.search(value):
        return value
    return None


def field_path(loc: Loc) -> str:
    """`("data", "needs", 2)` → `data.needs[2]`; a key that is not a plain field name is not shown."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if FIELD_NAME.fullmatch(part) and not DIGIT_RUN.search(part) else "<unnamed field>"
            out += f".{name}" if out else name
    return out or "body"


def reason(loc: Loc, problem: str) -> str:
    """One reason: the field path, a colon, what is wrong."""
    return f"{field_path(loc)}: {problem}"


def reasons_from(error: ValidationError, prefix: Loc = ("data",)) -> list[str]:
    """Every problem in a pydantic error, as reasons under `prefix`, in order and without repeats."""
    details = error.errors(include_url=False)
    parted = [_split_union(d["loc"]) for d in details]
    deep_branches = {base for base, rest, tagged in parted if tagged and rest}
    collapsed: set[tuple[str | int, ...]] = set()
    out: list[str] = []
    for detail, (base, rest, tagged) in zip(details, parted):
        if tagged and not rest:
            if base in deep_branches or base in collapsed:
                continue
            collapsed.add(base)
            field = _field_name(base)
            out.append(reason([*prefix, *base], UNION_HINTS.get(field, "has an invalid value or type")))
            continue
        loc = (*base, *rest)
        out.append(reason([*prefix, *loc], describe(detail, _field_name(loc))))
    return unique(out)


def describe(detail: ErrorDetails, field: str) -> str:
    """What is wrong, in our words, from the error's type and context; never from its message."""
    kind = detail["type"]
    ctx: dict[str, Any] = dict(detail.get("ctx") or {})
    echo = safe_code(detail.get("input")) if field in ECHO_FIELDS else None
    quoted = f" '{echo}'" if echo else ""
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "enum" and field in CODE_FIELDS:
        noun, codes = CODE_FIELDS[field]
        return f"unknown {noun}{quoted}; expected one of {', '.join(c.value for c in codes)}"
    if kind in ("enum", "literal_error"):
        expected = _ENUM_REPR.sub(r"\1", str(ctx.get("expected", "")))
        return f"must be {expected}" + (f", not{quoted}" if quoted else "")
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than") and field in BOUNDS:
        low, high = BOUNDS[field]
        return f"must be between {low} and {high}"
    if kind == "string_pattern_mismatch":
        return FORMATS.get(field, "has an invalid format")
    if kind == "string_too_short":
        shortest = ctx.get("min_length")
        return "must not be empty" if shortest == 1 else f"must be at least {shortest} characters"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", "is invalid"))
    fixed = _FIXED.get(kind)
    if fixed is not None:
        try:
            return fixed.format(**ctx)
        except (KeyError, IndexError):
            pass
    return f"is invalid ({kind})"


ENVELOPE_FIELDS = frozenset({"body", "specversion", "type", "source", "id", "time", "datacontenttype", "subject",
                             "reporter"})
OTHER_CODE = "other"
REJECTION_CODES = frozenset({*ENVELOPE_FIELDS, "data", OTHER_CODE,
                             *(f"data.{f}" for f in ReportData.model_fields.keys() | FollowUpData.model_fields.keys())})
"""Every value `reason_code` gives."""


def reason_code(text: str) -> str:
    """The code a reason counts under (a metric label): the field at fault, as `data.<top-level field>` or
    an envelope field; a field the models do not have (a typo, a stray key) is `other`, so the codes stay
    a closed set whatever a reporter sends."""
    path = text.split(":", 1)[0].strip()
    parts = re.sub(r"\[\d+\]", "", path).split(".")
    if parts[0] == "data":
        if len(parts) == 1:
            return "data"
        code = f"data.{parts[1]}"
        return code if code in REJECTION_CODES else OTHER_CODE
    return parts[0] if parts[0] in ENVELOPE_FIELDS else OTHER_CODE


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


_FIXED: dict[str, str] = {
    "string_type": "must be a string",
    "string_unicode": "must be valid Unicode text",
    "string_too_long": "must be at most {max_length} characters",
    "too_long": "must have at most {max_length} items",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "greater_than": "must be greater than {gt}",
    "less_than": "must be less than {lt}",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "timezone_aware": "must include a timezone offset",
    "datetime_type": "must be an RFC 3339 date-time with a timezone offset",
    "datetime_parsing": "must be an RFC 3339 date-time with a timezone offset",
    "datetime_from_date_parsing": "must be an RFC 3339 date-time with a timezone offset",
    "none_required": "must be null",
}


def _split_union(loc: Loc) -> tuple[tuple[str | int, ...], tuple[str | int, ...], bool]:
    """Split a loc at a union-branch tag such as `list[str-enum[AgencyType]]` (base, rest, tagged)."""
    for i, part in enumerate(loc):
        if isinstance(part, str) and "[" in part:
            rest = tuple(p for p in loc[i + 1 :] if not (isinstance(p, str) and "[" in p))
            return tuple(loc[:i]), rest, True
    return tuple(loc), (), False


def _field_name(loc: Loc) -> str:
    return next((p for p in reversed(loc) if isinstance(p, str)), "")
