"""Where the deployment profile (registry, rule pack, views) lives, and loading its registry."""

from __future__ import annotations

from pathlib import Path

import yaml

from domain.registry import AgencyRegistry, registry_from_mapping
from runtime.settings import Settings


def profile_dir(settings: Settings | None = None) -> Path:
    """The profile directory: `ALUR_PROFILE_DIR`, else the Kalimantan Selatan profile in this repository."""
    return (settings or Settings.from_env()).profile_dir


def load_registry_file(path: Path | str | None = None) -> AgencyRegistry:
    """The agency registry from `agencies.yaml` (default: the profile's)."""
    source = Path(path) if path is not None else profile_dir() / "agencies.yaml"
    data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    return registry_from_mapping(data["agencies"])
