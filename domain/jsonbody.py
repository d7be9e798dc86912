"""The one way untrusted bytes become JSON: bounded before any decoder runs, refused with a reason naming `body`.

Every door (intake's reports over NATS and HTTP, notify's responses) reads bodies through `load_json`. The
checks run in an order that keeps each one cheap on hostile input:

1. size: more than `max_bytes` is refused before anything looks inside (413);
2. UTF-8: the bytes are decoded as strict UTF-8 (`json.loads` on bytes would guess UTF-16 or UTF-32);
3. nesting: one linear scan counts `[`/`{` depth outside strings, so `json.loads` never recurses deeper
   than `max_depth` (2,000 nested objects used to end in `RecursionError`, a 500 and the DLQ);
4. decoding, where a repeated key, `NaN`/`Infinity`, a number that is not finite or longer than
   `MAX_NUMBER_CHARS` (a 10k-digit integer costs seconds to convert, `1e999999` becomes infinity) and a
   lone surrogate escape (text no UTF-8 encoder can write back) are each refused.

A reason says what is wrong, never what the body says, except a repeated key that is a short code.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from domain.reasons import reason, safe_code

MAX_DEPTH = 32
"""Our documents nest 5 levels (event → data → victim → identity → value); 32 leaves room and no risk."""
MAX_NUMBER_CHARS = 100
"""The longest number literal decoded; an age of 10**30 still reaches the model and is named there."""

HTTP_BAD_REQUEST = 400
HTTP_TOO_LARGE = 413

_TOKENS = re.compile(r'[\[\]{}"\\]')


@dataclass(frozen=True, slots=True)
class BodyRefused:
    """Why a body was not decoded: one reason naming `body`, and the HTTP status a door answers with."""

    reason: str
    http_status: int = HTTP_BAD_REQUEST


class _Refused(ValueError):
    """Raised inside the decoder's hooks; becomes a `BodyRefused`."""


def load_json(raw: bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The decoded JSON value of `raw`, or a `BodyRefused` saying why it was not decoded. Never raises."""
    if len(raw) > max_bytes:
        return BodyRefused(
            reason(["body"], f"{len(raw)} bytes is more than the limit of {max_bytes} bytes"), HTTP_TOO_LARGE
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return BodyRefused(reason(["body"], "is not valid JSON (UTF-8)"))
    if too_deep(text, max_depth):
        return BodyRefused(reason(["body"], f"is nested more than {max_depth} levels deep"))
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
            parse_int=_integer,
            parse_float=_float,
        )
    except _Refused as refused:
        return BodyRefused(reason(["body"], str(refused)))
    except (ValueError, RecursionError):
        return BodyRefused(reason(["body"], "is not valid JSON (UTF-8)"))
    if _has_lone_surrogate(value):
        return BodyRefused(reason(["body"], "has a \\u escape of an unpaired surrogate (not valid Unicode text)"))
    return value


def too_deep(text: str, max_depth: int) -> bool:
    """Whether arrays and objects nest more than `max_depth` levels, brackets inside strings ignored.

    Linear in the length of `text`: it looks only at brackets, quotes and backslashes, and never
    backtracks (an unterminated string simply runs to the end).
    """
    depth = 0
    in_string = False
    escaped = -1
    for match in _TOKENS.finditer(text):
        char, at = match.group(), match.start()
        if in_string:
            if at == escaped:
                continue
            if char == "\\":
                escaped = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            code = safe_code(key)
            raise _Refused("has a key more than once in one object" + (f" (repeated '{code}')" if code else ""))
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _Refused("must not contain NaN or Infinity (they are not JSON numbers)")


def _integer(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _Refused(f"has a number longer than {MAX_NUMBER_CHARS} characters")
    return int(literal)


def _float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _Refused(f"has a number longer than {MAX_NUMBER_CHARS} characters")
    value = float(literal)
    if not math.isfinite(value):
        raise _Refused("has a number too large to represent")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any key or string holds a lone surrogate (only a `\\u` escape can make one). Depth is bounded."""
    if isinstance(value, str):
        return _surrogate(value)
    if isinstance(value, dict):
        return any(_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
