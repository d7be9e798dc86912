"""The one safe JSON loader (issue 10.4): bounded before any decoder runs, every refusal a reason naming `body`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.jsonbody import MAX_DEPTH, BodyRefused, load_json, too_deep

LIMIT = 64 * 1024
BIG = 1 << 24  # a limit that lets the hostile bodies below reach the depth and number checks


REFUSED: list[Any] = [
    pytest.param(b'{"a":' * 2000 + b"1" + b"}" * 2000, BIG, 400, "is nested more than 32 levels deep",
                 id="2000-nested-objects"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, BIG, 400, "is nested more than 32 levels deep",
                 id="100k-nested-lists"),
    pytest.param(b"[" * 100_000, BIG, 400, "is nested more than 32 levels deep", id="100k-unclosed-lists"),
    pytest.param(b'{"age": 1e999999}', LIMIT, 400, "has a number too large to represent", id="1e999999"),
    pytest.param(b'{"age": -1e999999}', LIMIT, 400, "has a number too large to represent", id="minus-1e999999"),
    pytest.param(b'{"age": ' + b"9" * 10_000 + b"}", LIMIT, 400, "has a number longer than 100 characters",
                 id="10k-digit-integer"),
    pytest.param(b'{"age": 0.' + b"1" * 10_000 + b"}", LIMIT, 400, "has a number longer than 100 characters",
                 id="10k-digit-fraction"),
    pytest.param(b'{"age": NaN}', LIMIT, 400, "must not contain NaN or Infinity (they are not JSON numbers)",
                 id="nan"),
    pytest.param(b'{"age": -Infinity}', LIMIT, 400, "must not contain NaN or Infinity (they are not JSON numbers)",
                 id="minus-infinity"),
    pytest.param(b'{"data": {}, "data": {"x": 1}}', LIMIT, 400,
                 "has a key more than once in one object (repeated 'data')", id="duplicate-key"),
    pytest.param(b'{"a": {"Siti A.": 1, "Siti A.": 2}}', LIMIT, 400, "has a key more than once in one object",
                 id="duplicate-key-not-echoed"),
    pytest.param(b"\xff\xfe{\x00}\x00", LIMIT, 400, "is not valid JSON (UTF-8)", id="utf16-is-not-utf8"),
    pytest.param(b'{"name": "Siti \xe9"}', LIMIT, 400, "is not valid JSON (UTF-8)", id="latin1"),
    pytest.param(b'{"name": "\\ud800"}', LIMIT, 400,
                 "has a \\u escape of an unpaired surrogate (not valid Unicode text)", id="lone-surrogate"),
    pytest.param(b'{"\\udfff": 1}', LIMIT, 400,
                 "has a \\u escape of an unpaired surrogate (not valid Unicode text)", id="lone-surrogate-key"),
    pytest.param(b'{"a": 1', LIMIT, 400, "is not valid JSON (UTF-8)", id="truncated"),
    pytest.param(b"\xef\xbb\xbf{}", LIMIT, 400, "is not valid JSON (UTF-8)", id="bom"),
    pytest.param(b" " * (LIMIT + 1), LIMIT, 413, f"{LIMIT + 1} bytes is more than the limit of {LIMIT} bytes",
                 id="too-large"),
]


@pytest.mark.parametrize(("raw", "limit", "status", "problem"), REFUSED)
def test_hostile_bodies_are_refused_with_a_reason_naming_body(raw: bytes, limit: int, status: int,
                                                              problem: str) -> None:
    outcome = load_json(raw, max_bytes=limit)

    assert outcome == BodyRefused(f"body: {problem}", status)
    assert "Siti" not in outcome.reason


def test_depth_limit_is_exact() -> None:
    assert not isinstance(load_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, max_bytes=LIMIT), BodyRefused)
    assert isinstance(load_json(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), max_bytes=LIMIT), BodyRefused)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"narrative": "[" * 5000 + '\\" {{{ "' + "}" * 10, "k[": ["]]]"]})

    assert load_json(text.encode(), max_bytes=LIMIT) == json.loads(text)


def test_escaped_quotes_and_backslashes_keep_the_scan_in_step() -> None:
    # a string ending in an escaped backslash closes there: the brackets after it are structure again
    inside = b'["a\\\\", ' + b"[" * 40 + b"]" * 40 + b"]"
    assert isinstance(load_json(inside, max_bytes=LIMIT), BodyRefused)
    # an escaped quote does not close the string: the brackets after it are text
    text = b'["a\\" ' + b"[" * 40 + b'"]'
    assert load_json(text, max_bytes=LIMIT) == ['a" ' + "[" * 40]


def test_a_quadratic_trap_for_a_regex_scanner_is_linear_here() -> None:
    body = b'"' + b'\\"' * 30_000  # an unterminated string of escaped quotes
    assert load_json(body, max_bytes=LIMIT) == BodyRefused("body: is not valid JSON (UTF-8)")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=40,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300)
@given(json_values, st.integers(min_value=0, max_value=8))
def test_the_scan_measures_what_the_decoder_would_nest(value: Any, limit: int) -> None:
    assert too_deep(json.dumps(value), limit) == (_depth(value) > limit)


@settings(max_examples=300)
@given(json_values)
def test_every_plain_json_document_round_trips(value: Any) -> None:
    assert load_json(json.dumps(value).encode(), max_bytes=BIG) == value


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    outcome = load_json(raw, max_bytes=LIMIT)
    if isinstance(outcome, BodyRefused):
        assert outcome.reason.startswith("body: ") and outcome.http_status in (400, 413)
