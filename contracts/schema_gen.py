"""JSON Schemas of every event type in `catalog.EVENTS`, committed under `contracts/schemas/<type>.json`.

Each schema is the CloudEvent envelope with that type's `data` model, and `type` fixed to the type itself,
so an event validates only against the schema of what it says it is. `python -m contracts.schema_gen`
(`make schemas`) rewrites them; a test fails when the committed files drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from contracts.catalog import EVENTS, envelope_model

SCHEMA_DIR = Path(__file__).with_name("schemas")


def schema_of(event_type: str) -> dict[str, Any]:
    """The JSON Schema of one event type: the envelope around its data model, `type` pinned to it."""
    return envelope_model(event_type).model_json_schema()


def render() -> dict[str, str]:
    """File name → JSON Schema text, for every event type."""
    return {f"{name}.json": json.dumps(schema_of(name), indent=2, sort_keys=True) + "\n" for name in EVENTS}


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Rewrite the schema directory: one file per event type, and no file for a type that is gone."""
    directory.mkdir(parents=True, exist_ok=True)
    rendered = render()
    for stale in directory.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    written = []
    for name, text in rendered.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(path, file=sys.stderr)
