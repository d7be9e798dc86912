"""Durations as people write them in the profile and the topology: `90s`, `30m`, `6h`, `7d`."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> Any:
    """`"90s"`, `"30m"`, `"6h"`, `"7d"` as a timedelta; anything else is left to pydantic (ISO 8601, seconds)."""
    if isinstance(value, str) and (match := _DURATION_RE.match(value.strip())):
        return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
