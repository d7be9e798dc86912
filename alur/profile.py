"""Where the deployment profile (registry, rule pack, views) lives, and loading its registry."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from alur.registry import AgencyRegistry, registry_from_mapping


def profile_dir() -> Path:
    """The profile directory: `ALUR_PROFILE_DIR`, else the Kalimantan Selatan profile in this repository."""
    configured = os.environ.get("ALUR_PROFILE_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[1] / "deploy" / "kalsel"


def load_registry_file(path: Path | str | None = None) -> AgencyRegistry:
    """The agency registry from `agencies.yaml` (default: the profile's)."""
    source = Path(path) if path is not None else profile_dir() / "agencies.yaml"
    data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    return registry_from_mapping(data["agencies"])
